"""Refused requests (4xx but 404) are logged at INFO with why, on
``queues.requests``; no log line repeats a client's value whole."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client

from conftest import Api, make_token

# Imported before any test runs: its first import sets Django up again, and
# the logging settings it applies would undo the ``logged`` fixture mid-test.
from mqadmin.asgi import application
from queues import broker
from queues.api import auth


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog, also fed by the ``queues`` loggers (the settings keep them
    from propagating to the root logger, where caplog listens)."""
    monkeypatch.setattr(logging.getLogger("queues"), "propagate", True)
    caplog.set_level(logging.INFO)
    return caplog


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "queues.requests"]


@pytest.fixture
def work(db: None) -> None:
    auth.forget()
    broker.put_queue("work", {})


def test_a_refused_call_is_logged_at_info_with_its_status_code_and_reason(work: None, logged: pytest.LogCaptureFixture) -> None:
    assert Api(make_token("produce")).post("queues/work/receive", {}).status_code == 403
    assert Api("mq0000.guess").get("queues").status_code == 401
    assert refusals(logged) == [
        "refused 403 forbidden: POST /api/v1/queues/work/receive: This token lacks the consume scope.",
        "refused 401 unauthorized: GET /api/v1/queues: Unknown or revoked API token.",
    ]
    assert {r.levelno for r in logged.records if r.name == "queues.requests"} == {logging.INFO}


def test_not_found_and_success_are_not_logged(work: None, logged: pytest.LogCaptureFixture) -> None:
    api = Api(make_token("admin"))
    assert api.get("queues/nope").status_code == 404
    assert api.get("queues/work").status_code == 200
    assert refusals(logged) == []


def test_a_long_name_is_cut_short_in_every_log_line(work: None, logged: pytest.LogCaptureFixture) -> None:
    name = "q" * 5000
    response = Api(make_token("admin")).put(f"queues/{name}", {})
    assert response.status_code == 422
    lines = [r.getMessage() for r in logged.records]
    assert lines and all(len(line) < 600 for line in lines), [line[:200] for line in lines]
    assert any(line.startswith("refused 422 invalid_value: PUT /api/v1/queues/qqq") for line in lines)
    assert not [r for r in logged.records if r.name == "django.request"]  # its WARNING repeated the path whole


def test_an_sqs_refusal_is_logged_with_its_sqs_code(db: None, logged: pytest.LogCaptureFixture) -> None:
    auth.forget()
    response = Client().post("/sqs/", b"{}", content_type="application/x-amz-json-1.0", headers={"X-Amz-Target": "AmazonSQS.ListQueues"})
    assert response.status_code in (400, 403)
    (line,) = refusals(logged)
    assert line.startswith(f"refused {response.status_code} MissingAuthenticationToken")  # SQS's __type
    assert ": POST /sqs/: Request is missing Authentication Token" in line


@pytest.mark.django_db(transaction=True)
def test_a_refused_stream_is_logged(logged: pytest.LogCaptureFixture) -> None:
    broker.put_queue("work", {})
    token = make_token("produce")

    async def open_stream() -> None:
        headers = [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())]
        comm = WebsocketCommunicator(application, "/api/v1/queues/work/consume", headers=headers)
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from(timeout=5))["error"]["code"] == "forbidden"
        await comm.wait(timeout=5)

    async_to_sync(open_stream)()
    assert refusals(logged) == [
        "refused 403 forbidden: WEBSOCKET /api/v1/queues/work/consume: This token lacks the consume scope."
    ]
