"""The middleware stack: machine endpoints skip sessions, CSRF cookies and
login; every response keeps its security headers; pages keep CSRF. Checked on
both of Django's paths: the sync handler (Client) and the ASGI one
(AsyncClient), where our subclasses run their hooks on the event loop."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import AsyncClient, Client, override_settings

from conftest import make_token

pytestmark = pytest.mark.django_db(transaction=True)

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def has_security_headers(response: Any) -> bool:
    return all(response.headers.get(k) == v for k, v in SECURITY_HEADERS.items())


@pytest.fixture(params=["sync", "asgi"])
def fetch(request: pytest.FixtureRequest) -> Any:
    """``fetch(method, path, **kw)`` through the sync or the ASGI handler."""
    from asgiref.sync import async_to_sync

    if request.param == "sync":
        client = Client()
        return lambda method, path, **kw: getattr(client, method)(path, **kw)
    aclient = AsyncClient()
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
