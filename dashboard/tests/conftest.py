"""Fixtures for the dashboard: staff and non-staff sessions, sockets."""

from __future__ import annotations

from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard import publisher
from queues import events


@pytest.fixture(autouse=True)
def fresh_aggregator(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test starts as a freshly elected leader with nothing sent yet.
    monkeypatch.setattr(publisher, "aggregator", publisher.Aggregator())
    monkeypatch.setattr(publisher, "history", publisher.History())
    # Events earlier tests committed in this process are not this test's.
    events.drain()


def session_cookie(*, staff: bool, name: str | None = None) -> str:
    user = get_user_model().objects.create_user(name or ("op" if staff else "viewer"), password="pw-123456", is_staff=staff)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def communicator(cookie: str | None, origin: str = "http://testserver") -> WebsocketCommunicator:
    from mqadmin.asgi import application

    headers = [(b"origin", origin.encode()), (b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)


async def receive_until(comm: WebsocketCommunicator, match: Any, timeout: float = 5.0) -> dict:
    """Frames until one satisfies ``match`` (others are skipped)."""
    import time

    deadline = time.monotonic() + timeout
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching frame; saw {[f.get('type') for f in seen]}")
        try:
            frame = await comm.receive_json_from(timeout=left)
        except TimeoutError:
            raise AssertionError(f"no matching frame; saw {seen}") from None
        seen.append(frame)
        if match(frame):
            return frame
