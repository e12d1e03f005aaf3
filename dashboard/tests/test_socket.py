"""The dashboard websocket, end to end through the ASGI app (auth, origin
check, snapshot, relayed updates and events)."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async

from dashboard import publisher
from queues import broker, monitor
from queues.models import Message

from .conftest import communicator, receive_until, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def make_queue(name: str, **config: object) -> broker.Queue:
    return broker.put_queue(name, dict(config))[0]


def send(name: str, *bodies: bytes) -> None:
    broker.publish(broker.get_queue(name), [broker.NewMessage(body=b) for b in bodies])


async def test_anonymous_socket_is_refused():
    comm = communicator(None)
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


async def test_non_staff_socket_is_refused():
    cookie = await sync_to_async(session_cookie)(staff=False)
    comm = communicator(cookie)
    connected, code = await comm.connect()
    assert not connected
    assert code == 4403
    await comm.disconnect()


async def test_socket_from_a_foreign_origin_is_refused():
    cookie = await sync_to_async(session_cookie)(staff=True)
    comm = communicator(cookie, origin="http://evil.example")
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


async def test_staff_socket_gets_a_snapshot_of_queues_and_consumers():
    await sync_to_async(make_queue)("orders")
    await sync_to_async(send)("orders", b'{"pizza": 1}', b'{"pizza": 2}')
    await sync_to_async(broker.register_consumer)("chef-1", ["orders"], {}, None)
    cookie = await sync_to_async(session_cookie)(staff=True)
    comm = communicator(cookie)
    connected, _ = await comm.connect()
    assert connected
    snap = await comm.receive_json_from(timeout=5)
    assert snap["type"] == "snapshot"
    (orders,) = snap["queues"]
    assert (orders["name"], orders["ready"], orders["in_flight"], orders["paused"]) == ("orders", 2, 0, False)
    assert orders["oldest_ready_age"] is not None
    assert [(c["name"], c["status"]) for c in snap["consumers"]] == [("chef-1", "alive")]
    await comm.disconnect()


async def test_a_send_shows_as_a_queue_update_after_the_next_tick():
    await sync_to_async(make_queue)("orders")
    cookie = await sync_to_async(session_cookie)(staff=True)
    comm = communicator(cookie)
    assert (await comm.connect())[0]
    snap = await comm.receive_json_from(timeout=5)
    assert snap["queues"][0]["ready"] == 0
    await sync_to_async(send)("orders", b"1", b"2", b"3")
    await sync_to_async(publisher.publish_tick)(force=True)
    frame = await receive_until(comm, lambda f: f["type"] == "queue" and f["name"] == "orders")
    assert (frame["ready"], frame["in_flight"]) == (3, 0)
    tick = await receive_until(comm, lambda f: f["type"] == "tick")
    assert tick["totals"]["ready"] == 3
    await comm.disconnect()


async def test_an_unchanged_queue_is_not_resent_on_the_next_tick():
    await sync_to_async(make_queue)("orders")
    await sync_to_async(make_queue)("billing")
    await sync_to_async(publisher.publish_tick)(time.time(), force=True)
    await sync_to_async(send)("billing", b"1")
    frames = await sync_to_async(publisher.publish_tick)(time.time() + 1, force=True)
    assert [f["name"] for f in frames if f["type"] == "queue"] == ["billing"]


async def test_an_expired_lease_appears_as_a_redelivery_event():
    queue = await sync_to_async(make_queue)("orders", visibility_timeout=1)
    await sync_to_async(send)("orders", b'{"pizza": "margherita"}')
    consumer = await sync_to_async(broker.register_consumer)("chef-1", ["orders"], {}, None)
    (leased,) = await sync_to_async(broker.receive)(queue, consumer_id=consumer.id)
    cookie = await sync_to_async(session_cookie)(staff=True)
    comm = communicator(cookie)
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=5)  # snapshot
    # The monitor's tick finds the lease expired; the event is sent after commit.
    done = await sync_to_async(monitor.tick)(time.time() + 5)
    assert done["expired"] == 1
    event = await receive_until(comm, lambda f: f["type"] == "event" and f["kind"] == "redelivery")
    assert event["queue"] == "orders"
    assert event["message"] == str(leased.id)
    assert event["consumer"] == consumer.id
    assert event["delivery_count"] == 1
    await comm.disconnect()


async def test_a_dashboard_asks_for_chart_history():
    await sync_to_async(make_queue)("orders")
    cookie = await sync_to_async(session_cookie)(staff=True)
    comm = communicator(cookie)
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=5)
    now = time.time()
    await sync_to_async(publisher.publish_tick)(now, force=True)
    await comm.send_json_to({"type": "history", "queue": None})
    history = await receive_until(comm, lambda f: f["type"] == "history")
    assert history["t"] == [round(now, 3)]
    await comm.disconnect()


def test_a_burst_of_redeliveries_is_coalesced_into_one_event():
    raw = [{"kind": "redelivery", "queue": "orders", "at": 1.0 + i, "message": str(i)} for i in range(37)]
    raw.append({"kind": "purge", "queue": "billing", "at": 50.0, "count": 3})
    frames = publisher.coalesce(raw)
    assert [(f["kind"], f["queue"], f["events"]) for f in frames] == [("redelivery", "orders", 37), ("purge", "billing", 1)]
    assert frames[0]["coalesced"] is True
    assert len(frames[0]["examples"]) == publisher.COALESCE_SAMPLE
    assert frames[1]["count"] == 3 and "coalesced" not in frames[1]  # the purge's own data


async def test_tick_queries_do_not_grow_with_open_dashboards_or_stored_messages():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    await sync_to_async(make_queue)("orders")
    cookie = await sync_to_async(session_cookie)(staff=True)

    def tick_queries(now: float) -> list[str]:
        with CaptureQueriesContext(connection) as ctx:
            publisher.publish_tick(now, force=True)
        return [q["sql"] for q in ctx.captured_queries]

    alone = await sync_to_async(tick_queries)(time.time())
    sockets = [communicator(cookie) for _ in range(5)]
    for comm in sockets:
        assert (await comm.connect())[0]
        await comm.receive_json_from(timeout=5)
    await sync_to_async(send)("orders", *[b"1"] * 500)
    crowded = await sync_to_async(tick_queries)(time.time() + 1)
    assert len(crowded) == len(alone)
    # Depth comes from the counters: nothing counts the messages table.
    table = Message._meta.db_table
    assert not [q for q in crowded if "COUNT(" in q.upper() and table in q]
    for comm in sockets:
        frame = await receive_until(comm, lambda f: f["type"] == "queue")
        assert frame["ready"] == 500
        await comm.disconnect()


async def test_a_garbled_request_is_ignored_and_the_socket_stays_up():
    await sync_to_async(make_queue)("orders")
    cookie = await sync_to_async(session_cookie)(staff=True)
    comm = communicator(cookie)
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=5)
    await comm.send_to(text_data="{not json")
    await comm.send_json_to({"type": "history", "queue": 42})
    await comm.send_json_to({"type": "history", "queue": "orders"})
    answer = await receive_until(comm, lambda f: f["type"] == "history")
    assert answer["queue"] == "orders"
    await comm.disconnect()
