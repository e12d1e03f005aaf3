"""Shared test fixtures: API clients with tokens, queues, a controllable clock."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from django.test import Client


class Api:
    """A JSON client for /api/v1/ with a bearer token."""

    def __init__(self, raw_token: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {raw_token}"}

    def _call(self, method: str, path: str, body: Any = None, raw: bytes | str | None = None, **kw: Any) -> Any:
        url = path if path.startswith("/") else f"/api/v1/{path}"
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        fn = getattr(self.client, method)
        kwargs: dict[str, Any] = {"headers": {**self.headers, **kw.pop("headers", {})}}
        if data is not None:
            kwargs.update(data=data, content_type="application/json")
        elif method in ("post", "put"):
            kwargs.update(data="", content_type="application/json")  # as curl -X POST sends
        response = fn(url, **kwargs, **kw)
        response.data = json.loads(response.content) if response.content and response["Content-Type"].startswith("application/json") else None
        return response

    def get(self, path: str, **kw: Any) -> Any:
        return self._call("get", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._call("post", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self._call("put", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self._call("delete", path, **kw)

    # conveniences
    def make_queue(self, name: str, **config: Any) -> dict:
        r = self.put(f"queues/{name}", config)
        assert r.status_code in (200, 201), r.content
        return r.data

    def send(self, queue: str, *bodies: Any, **fields: Any) -> list[str]:
        r = self.post(f"queues/{queue}/messages", {"messages": [{"body": b, **fields} for b in bodies]})
        assert r.status_code == 201, r.content
        return [m["id"] for m in r.data["messages"]]

    def receive(self, queue: str, **body: Any) -> list[dict]:
        r = self.post(f"queues/{queue}/receive", body)
        assert r.status_code == 200, r.content
        return r.data["messages"]

    def ack(self, queue: str, *receipts: str) -> dict:
        r = self.post(f"queues/{queue}/ack", {"receipts": list(receipts)})
        assert r.status_code == 200, r.content
        return r.data

    def counts(self, queue: str) -> dict:
        return self.get(f"queues/{queue}").data


@functools.cache
def served_handler() -> Any:
    """The HTTP handler `mq serve` runs (queues.speedups), one per test
    process as one per server: its request threads are reused across
    requests."""
    from queues.speedups import ReusedThreadsASGIHandler

    return ReusedThreadsASGIHandler()


def make_token(scopes: str = "produce,consume,admin", queues: str = "*", name: str | None = None) -> str:
    import secrets

    from queues.models import Token

    _token, raw = Token.issue(name or f"t-{secrets.token_hex(4)}", scopes.split(","), queues)
    return raw


@pytest.fixture
def api(db: None) -> Api:
    from queues.api.auth import forget

    forget()
    return Api(make_token())


@pytest.fixture
def tapi(transactional_db: None) -> Api:
    """An Api for tests whose threads or processes must see committed data."""
    from queues.api.auth import forget

    forget()
    return Api(make_token())


@pytest.fixture
def token_factory(db: None):  # type: ignore[no-untyped-def]
    def make(scopes: str = "produce,consume,admin", queues: str = "*") -> Api:
        return Api(make_token(scopes, queues))

    return make


@pytest.fixture(scope="session", autouse=True)
def _close_db_pool(django_db_setup, django_db_blocker):  # type: ignore[no-untyped-def]
    """Close psycopg's pool before the test database is dropped: pooled
    connections opened by request threads would otherwise keep it in use."""
    yield
    from django.db import connections

    for conn in connections.all():
        if hasattr(conn, "close_pool"):
            conn.close_pool()
    # Long-poll LISTEN connections belong to event loops that the test client
    # made and threw away; end them so the test database can be dropped.
    conn = connections["default"]
    if conn.vendor == "postgresql":
        with django_db_blocker.unblock(), conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


# --------------------------------------------------------------------------- #
# Per-process caches
# --------------------------------------------------------------------------- #


@pytest.fixture(autouse=True)
def _forget_cached_queues() -> Any:
    """A test's rollback fires no delete signal: forget cached queue lookups
    so the next test never sees a queue of the last one."""
    from queues import broker

    broker.forget_queues()
    yield
    broker.forget_queues()


@pytest.fixture(autouse=True)
def _fresh_event_buffer() -> Any:
    """Events a test caused stay with that test: the in-process buffer starts
    empty, whatever the test before it announced."""
    from queues import events

    events.drain()
    yield
    events.drain()
