"""Static files are served by the app itself: no spelling of a path that
leaves the static root reaches a file outside it, and none is a 500."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator

from conftest import served_handler
from queues.tests.live import ROOT

# As a client sends them on the wire; the server percent-decodes once.
LEAVING_THE_ROOT = [
    "/static/../mqadmin/settings.py",
    "/static/..%2fmqadmin/settings.py",
    "/static/%2e%2e/mqadmin/settings.py",
    "/static/%2E%2E%2Fmqadmin%2Fsettings.py",
    "/static/%252e%252e/mqadmin/settings.py",
    "/static/..%252fmqadmin/settings.py",
    "/static/..%5cmqadmin%5csettings.py",
    "/static/..\\mqadmin\\settings.py",
    "/static/dashboard/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/vendor/../../../../../../etc/passwd",
    "/static//etc/passwd",
    "/static/%00",
]


def get(application: Any, path: str) -> dict[str, Any]:
    """The status and body (HttpCommunicator.get_response cannot read a
    streamed file: its last chunk has no body)."""
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"testserver")])

    async def read() -> dict[str, Any]:
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(10)
        body, more = b"", True
        while more:
            chunk = await communicator.receive_output(10)
            body += chunk.get("body", b"")
            more = chunk.get("more_body", False)
        return {"status": start["status"], "body": body}

    return async_to_sync(read)()


@pytest.fixture(params=["asgi", "served"])
def application(request: pytest.FixtureRequest) -> Any:
    """The project's ASGI application with Django's handler inside, or with
    the one `mq serve` runs."""
    from mqadmin import asgi

    return asgi.application if request.param == "asgi" else asgi.StaticFiles(served_handler())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", LEAVING_THE_ROOT)
def test_a_path_leaving_the_static_root_is_not_found(application: Any, path: str) -> None:
    response = get(application, path)
    assert response["status"] == 404, (path, response["body"][:200])
    assert b"SECRET_KEY" not in response["body"] and b"root:" not in response["body"]
    assert b"Traceback" not in response["body"]


@pytest.mark.django_db(transaction=True)
def test_a_static_file_is_still_served(application: Any) -> None:
    response = get(application, "/static/dashboard/dashboard.css")
    assert response["status"] == 200
    assert response["body"] == (ROOT / "static/dashboard/dashboard.css").read_bytes()
