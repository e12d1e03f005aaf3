"""The middleware stack: machine endpoints skip sessions, CSRF cookies and
login; every response keeps its security headers; pages keep CSRF. Checked on
three paths: Django's sync handler (Client), Django's ASGI one (AsyncClient),
where our subclasses run their hooks on the event loop, and the ASGI handler
`mq serve` runs (queues/speedups.py), which serves a sync view with the sync
middleware chain on one request thread."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import AsyncClient, Client, override_settings

from conftest import make_token, served_handler

pytestmark = pytest.mark.django_db(transaction=True)

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def has_security_headers(response: Any) -> bool:
    return all(response.headers.get(k) == v for k, v in SECURITY_HEADERS.items())


class Served:
    """What a test needs of a response from the served handler."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.status_code = raw["status"]
        self.content = raw["body"]
        self.headers = {k.decode().title(): v.decode() for k, v in raw["headers"]}
        cookies = [v.decode() for k, v in raw["headers"] if k.lower() == b"set-cookie"]
        self.cookies = {c.split("=", 1)[0]: c for c in cookies}


def serve(method: str, path: str, data: str = "", content_type: str = "", headers: dict[str, str] | None = None) -> Served:
    """One request through the ASGI application `mq serve` runs."""
    from asgiref.sync import async_to_sync
    from channels.testing import HttpCommunicator

    application = served_handler()

    pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_type:
        pairs.append((b"content-type", content_type.encode()))
    pairs.append((b"host", b"testserver"))
    communicator = HttpCommunicator(application, method.upper(), path, body=data.encode(), headers=pairs)
    return Served(async_to_sync(communicator.get_response)(timeout=10))


@pytest.fixture(params=["sync", "asgi", "served"])
def fetch(request: pytest.FixtureRequest) -> Any:
    """``fetch(method, path, **kw)`` through the sync handler, Django's ASGI
    handler, or ours."""
    from asgiref.sync import async_to_sync

    # CSRF is checked as it is for a real client: Django's test clients skip
    # it unless told to.
    if request.param == "sync":
        client = Client(enforce_csrf_checks=True)
        return lambda method, path, **kw: getattr(client, method)(path, **kw)
    if request.param == "served":
        return serve
    aclient = AsyncClient(enforce_csrf_checks=True)
    return lambda method, path, **kw: async_to_sync(getattr(aclient, method))(path, **kw)


def test_api_answers_with_security_headers_and_no_session_or_cookie(fetch: Any) -> None:
    auth = {"Authorization": f"Bearer {make_token()}"}
    put = fetch("put", "/api/v1/queues/mw", data="{}", content_type="application/json", headers=auth)
    assert put.status_code == 201, put.content
    sent = fetch("post", "/api/v1/queues/mw/messages", data='{"body": 1}', content_type="application/json", headers=auth)
    assert sent.status_code == 201, sent.content
    for response in (put, sent, fetch("get", "/healthz"), fetch("get", "/api/v1/queues/nope", headers=auth)):
        assert has_security_headers(response), dict(response.headers)
        assert not response.cookies
        assert "Cookie" not in response.headers.get("Vary", "")


def test_pages_still_get_sessions_csrf_and_security_headers(fetch: Any) -> None:
    login = fetch("get", "/admin/login/")
    assert login.status_code == 200
    assert has_security_headers(login)
    assert "csrftoken" in login.cookies
    # A form post without the CSRF token is refused: CSRF still guards pages.
    strict = Client(enforce_csrf_checks=True)
    refused = strict.post("/admin/login/", {"username": "x", "password": "y"})
    assert refused.status_code == 403


def call(fetch: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    """``method path`` with an empty JSON body where the method takes one."""
    body = {} if method == "get" else {"data": "{}", "content_type": "application/json"}
    return fetch(method, path, headers=headers, **body)


def api_error(response: Any, status: int, code: str) -> dict[str, Any]:
    import orjson

    assert response.status_code == status, (response.status_code, response.content[:200])
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.content.endswith(b"\n")
    error: dict[str, Any] = orjson.loads(response.content)["error"]
    assert error["code"] == code and error["message"], error
    return error


@pytest.mark.parametrize("token", [False, True], ids=["anonymous", "token"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/api/v1/"),
        ("post", "/api/v1/"),
        ("delete", "/api/v1/"),
        ("get", "/api/v1/nonexistent"),
        ("post", "/api/v1/nonexistent"),
        ("patch", "/api/v1/nonexistent"),
        ("delete", "/api/v1/queues/x/nope"),
        ("put", "/api/v1/queues/x/nope/"),
        ("post", "/api/v2/queues"),
    ],
)
def test_an_unknown_api_path_is_404_json_whatever_the_method(fetch: Any, method: str, path: str, token: bool) -> None:
    headers = {"Authorization": f"Bearer {make_token()}"} if token else {}
    api_error(call(fetch, method, path, headers), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("post", "/api/v1/openapi.json", {"GET", "HEAD"}),
        ("put", "/api/v1/openapi.json", {"GET", "HEAD"}),
        ("delete", "/api/v1/docs", {"GET", "HEAD"}),
        ("post", "/api/v1/queues", {"GET"}),
        ("patch", "/api/v1/queues/x", {"GET", "PUT", "DELETE"}),
        ("get", "/api/v1/queues/x/receive", {"POST"}),
        ("put", "/api/v1/consumers", {"GET", "POST"}),
    ],
)
def test_a_known_api_path_with_another_method_is_405_json(fetch: Any, method: str, path: str, allowed: set[str]) -> None:
    headers = {"Authorization": f"Bearer {make_token()}"}
    response = call(fetch, method, path, headers)
    api_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == allowed


def test_a_csrf_failure_under_the_api_is_the_contracts_json_and_a_page_keeps_its_html() -> None:
    from django.test import RequestFactory
    from django.views.csrf import csrf_failure

    from queues.api.errors import JSONErrorsMiddleware

    refuse = JSONErrorsMiddleware(lambda request: csrf_failure(request, reason="CSRF cookie not set."))
    api_error(refuse(RequestFactory().post("/api/v1/queues/x/purge")), 403, "forbidden")
    page = refuse(RequestFactory().post("/admin/login/"))
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")


def test_common_middleware_still_redirects_a_missing_slash(fetch: Any) -> None:
    response = fetch("get", "/admin")
    assert response.status_code == 301 and response.headers["Location"] == "/admin/"


def test_a_stack_without_the_security_middleware_is_reported() -> None:
    assert not [m for m in run_checks() if m.id == "mq.W004"]
    from django.conf import settings

    without = [m for m in settings.MIDDLEWARE if not m.endswith(("SecurityMiddleware", "XFrameOptionsMiddleware", "CsrfViewMiddleware"))]
    with override_settings(MIDDLEWARE=without):
        messages = [m.msg for m in run_checks() if m.id == "mq.W004"]
    assert len(messages) == 3, messages


@pytest.fixture
def request_jobs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Counts the jobs handed to request threads, and notes the thread that
    request_started and request_finished ran on."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from django.core import signals

    seen: dict[str, Any] = {"jobs": 0}
    real_submit = ThreadPoolExecutor.submit

    def counting_submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        if self._thread_name_prefix == "request":
            seen["jobs"] += 1
        return real_submit(self, fn, *args, **kwargs)

    def started(**kw: Any) -> None:
        seen["started"] = threading.get_ident()

    def finished(**kw: Any) -> None:
        seen["finished"] = threading.get_ident()

    monkeypatch.setattr(ThreadPoolExecutor, "submit", counting_submit)
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield seen
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


def test_a_sync_view_is_served_in_one_hand_off_to_its_thread(request_jobs: dict[str, Any]) -> None:
    """request_started, the middleware, the view and request_finished run in
    one call on the request's thread, not on the event loop: one job for the
    whole request (Django's ASGI path needs three)."""
    import threading

    response = serve("get", "/healthz")
    assert response.status_code == 200, response.content
    assert request_jobs["jobs"] == 1
    assert request_jobs["started"] == request_jobs["finished"] != threading.get_ident()


def test_an_async_view_runs_request_started_in_its_first_hand_off(request_jobs: dict[str, Any]) -> None:
    """The receive (an async view): request_started rides with the claim, so
    the request takes two jobs (claim, then request_finished once the
    response is out), both on the request's thread."""
    import threading

    import orjson

    auth = {"Authorization": f"Bearer {make_token()}"}
    assert serve("put", "/api/v1/queues/hop", data="{}", content_type="application/json", headers=auth).status_code == 201
    assert serve("post", "/api/v1/queues/hop/messages", data='{"body": 1}', content_type="application/json", headers=auth).status_code == 201
    request_jobs["jobs"] = 0
    got = serve("post", "/api/v1/queues/hop/receive", data='{"wait": 1}', content_type="application/json", headers=auth)
    assert got.status_code == 200, got.content
    assert [m["body"] for m in orjson.loads(got.content)["messages"]] == [1]
    assert request_jobs["jobs"] == 2
    assert request_jobs["started"] == request_jobs["finished"] != threading.get_ident()
