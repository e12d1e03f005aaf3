"""Several `mq serve` processes sharing PostgreSQL and Redis form one broker:
a dashboard connected to one server sees what happens on another."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
from django.conf import settings

from queues.tests.live import live_server

from .conftest import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def needs_postgres_and_redis() -> str:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("several servers form one broker only on PostgreSQL (SQLite is one machine, one process)")
    import redis

    url = f"redis://127.0.0.1:6379/{random.randint(1, 15)}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {url}: {exc}")
    return url


async def frames_until(url: str, cookie: str, act, match, timeout: float = 20.0) -> dict:
    """Open a dashboard socket on ``url``, wait for its snapshot, call
    ``act()``, then return the first frame that satisfies ``match``."""
    import websockets

    ws_url = url.replace("http://", "ws://") + "/ws/dashboard/"
    async with websockets.connect(ws_url, additional_headers={"Cookie": f"sessionid={cookie}", "Origin": url}) as ws:
        snapshot = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert snapshot["type"] == "snapshot"
        await asyncio.to_thread(act)
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
            if match(frame):
                return frame


def test_a_message_sent_to_one_server_shows_on_a_dashboard_of_another(tapi):
    layer = needs_postgres_and_redis()
    tapi.make_queue("orders")
    cookie = session_cookie(staff=True)
    # A leads (its monitor aggregates); B serves the dashboard with no monitor.
    with live_server(CHANNEL_LAYER_URL=layer) as a, live_server(monitor=False, CHANNEL_LAYER_URL=layer) as b:
        api = httpx.Client(base_url=f"{a}/api/v1/", headers=tapi.headers, timeout=10)

        def send() -> None:
            assert api.post("queues/orders/messages", json={"body": {"pizza": "margherita"}}).status_code == 201

        frame = asyncio.run(
            frames_until(b, cookie, send, lambda f: f["type"] == "queue" and f["name"] == "orders" and f["ready"] == 1)
        )
        assert frame["in_flight"] == 0

        # An event committed by a request on A (a purge) reaches B's dashboard too.
        def purge() -> None:
            assert api.post("queues/orders/purge").status_code == 200

        event = asyncio.run(frames_until(b, cookie, purge, lambda f: f["type"] == "event" and f["kind"] == "purge"))
        assert (event["kind"], event["queue"], event["count"]) == ("purge", "orders", 1)
        api.close()
