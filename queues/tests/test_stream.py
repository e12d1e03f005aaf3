"""Consume streams (websocket ``/api/v1/queues/{name}/consume``): deliveries
pushed up to the prefetch window, acks, nacks and extends on the socket,
what a closed stream leaves behind, refusals, and in-process streams racing
over one queue. (The Python client's streams against a real server are tested
with the client, in clients/python/tests.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection

from conftest import make_token
from queues import broker
from queues.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(queue: str, token: str | None, query: str = "") -> WebsocketCommunicator:
    from mqadmin.asgi import application

    headers = [(b"host", b"testserver")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return WebsocketCommunicator(application, f"/api/v1/queues/{queue}/consume{query}", headers=headers)


def make_queue(name: str, **config: Any) -> None:
    broker.put_queue(name, dict(config))


def send(name: str, *bodies: Any, **fields: Any) -> list[int]:
    queue = broker.get_queue(name)
    new = [broker.NewMessage(body=json.dumps(b).encode(), **fields) for b in bodies]
    return [int(p.id) for p in broker.publish(queue, new)]


def states(name: str) -> dict[str, list[tuple[int, int]]]:
    """Per state, (id, delivery count) of the queue's messages."""
    out: dict[str, list[tuple[int, int]]] = {}
    for mid, state, count in Message.objects.filter(queue__name=name).order_by("id").values_list("id", "state", "delivery_count"):
        out.setdefault(state, []).append((mid, count))
    return out


async def opened(queue: str, query: str = "", token: str | None = None) -> WebsocketCommunicator:
    comm = communicator(queue, token or await sync_to_async(make_token)(), query)
    connected, _ = await comm.connect()
    assert connected
    ready = await comm.receive_json_from(timeout=5)
    assert ready["type"] == "ready" and ready["queue"] == queue, ready
    return comm


async def frame(comm: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    return await comm.receive_json_from(timeout=timeout)


async def test_deliveries_are_pushed_up_to_prefetch_and_an_ack_frees_a_slot():
    await sync_to_async(make_queue)("orders")
    ids = await sync_to_async(send)("orders", *range(5))
    comm = await opened("orders", "?prefetch=2")
    first = await frame(comm)
    assert first["type"] == "messages"
    assert [m["id"] for m in first["messages"]] == [str(i) for i in ids[:2]]
    assert [m["body"] for m in first["messages"]] == [0, 1]
    assert await comm.receive_nothing(timeout=0.3)  # the window is full
    await comm.send_json_to({"type": "ack", "receipts": [first["messages"][0]["receipt"]]})
    second = await frame(comm)
    assert second["acked"] == [str(ids[0])] and second["stale"] == []
    assert [m["id"] for m in second["messages"]] == [str(ids[2])]
    await comm.disconnect()
    left = await sync_to_async(states)("orders")
    # Acked: gone. Held when the stream closed: ready again at once, as redeliveries.
    assert left == {"ready": [(ids[1], 1), (ids[2], 1), (ids[3], 0), (ids[4], 0)]}
    counts = (await sync_to_async(broker.queue_counts)())[(await sync_to_async(broker.get_queue)("orders")).id]
    assert (counts.ready, counts.in_flight) == (4, 0)


async def test_a_stream_opens_with_a_ready_frame_saying_what_it_was_granted():
    await sync_to_async(make_queue)("granted", visibility_timeout=45)
    consumer = await sync_to_async(broker.register_consumer)("chef", ["granted"], {}, None)
    comm = communicator("granted", await sync_to_async(make_token)(), f"?prefetch=7&consumer={consumer.pk}")
    assert (await comm.connect())[0]
    assert await frame(comm) == {"type": "ready", "queue": "granted", "prefetch": 7, "visibility_timeout": 45, "consumer": consumer.pk}
    await comm.disconnect()


async def test_a_send_reaches_a_waiting_stream():
    await sync_to_async(make_queue)("idle")
    comm = await opened("idle", "?prefetch=5")
    assert await comm.receive_nothing(timeout=0.2)
    sent_at = time.monotonic()
    [mid] = await sync_to_async(send)("idle", {"pizza": "margherita"})
    got = await frame(comm)
    assert [m["id"] for m in got["messages"]] == [str(mid)]
    assert got["messages"][0]["body"] == {"pizza": "margherita"}
    assert time.monotonic() - sent_at < 0.9  # woken, not found by the once-a-second recheck
    await comm.disconnect()


async def test_acks_sent_just_before_closing_are_applied_not_redelivered():
    await sync_to_async(make_queue)("closing")
    ids = await sync_to_async(send)("closing", "a", "b", "c")
    comm = await opened("closing", "?prefetch=3")
    got = await frame(comm)
    receipts = [m["receipt"] for m in got["messages"]]
    await comm.send_json_to({"type": "ack", "receipts": receipts[:2]})
    await comm.disconnect()
    assert await sync_to_async(states)("closing") == {"ready": [(ids[2], 1)]}


async def test_nack_extend_and_stale_acks_are_answered_on_the_stream():
    await sync_to_async(make_queue)("verdicts", visibility_timeout=30)
    ids = await sync_to_async(send)("verdicts", "x", "y")
    comm = await opened("verdicts", "?prefetch=2&visibility_timeout=10")
    got = (await frame(comm))["messages"]
    x, y = got[0]["receipt"], got[1]["receipt"]

    await comm.send_json_to({"type": "extend", "receipts": [y], "visibility_timeout": 600})
    extended = await frame(comm)
    assert extended["type"] == "extended" and extended["extended"] == [str(ids[1])] and extended["stale"] == []
    lease = await sync_to_async(lambda: Message.objects.get(pk=ids[1]).lease_expires_at)()
    assert lease > time.time() + 500

    await comm.send_json_to({"type": "nack", "receipts": [x], "reason": "oven cold"})
    nacked = await frame(comm)
    assert nacked == {"type": "nacked", "nacked": [str(ids[0])], "stale": []}
    again = await frame(comm)  # the nacked message, redelivered into the freed slot
    assert [(m["id"], m["delivery_count"]) for m in again["messages"]] == [(str(ids[0]), 2)]

    await comm.send_json_to({"type": "ack", "receipts": [x, y]})  # x's lease moved on
    acked = await frame(comm)
    assert acked["acked"] == [str(ids[1])] and acked["stale"] == [x]
    await comm.send_json_to({"type": "ack", "receipts": [again["messages"][0]["receipt"]]})
    assert (await frame(comm))["acked"] == [str(ids[0])]
    await comm.disconnect()
    assert await sync_to_async(states)("verdicts") == {}


@pytest.mark.parametrize(
    ("sent", "status", "code"),
    [
        ("not json", 400, "bad_request"),
        (json.dumps([1, 2]), 400, "bad_request"),
        (json.dumps({"type": "purge"}), 400, "bad_request"),
        (json.dumps({"type": "ack"}), 422, "invalid_value"),
        (json.dumps({"type": "ack", "receipts": "1.abc"}), 400, "bad_request"),
        (json.dumps({"type": "ack", "receipts": ["not-a-receipt"]}), 422, "invalid_value"),
        (json.dumps({"type": "ack", "receipts": ["1." + "0" * 32], "extra": 1}), 422, "invalid_value"),
        (json.dumps({"type": "nack", "receipts": ["1." + "0" * 32], "delay": -1}), 422, "invalid_value"),
        (json.dumps({"type": "extend", "receipts": ["1." + "0" * 32], "visibility_timeout": "5"}), 400, "bad_request"),
    ],
)
async def test_a_bad_frame_gets_the_contract_error_and_the_stream_goes_on(sent, status, code):
    await sync_to_async(make_queue)("hostile")
    ids = await sync_to_async(send)("hostile", 1, 2)
    comm = await opened("hostile", "?prefetch=1")
    held = (await frame(comm))["messages"][0]
    await comm.send_to(text_data=sent)
    error = await frame(comm)
    assert error["type"] == "error" and error["status"] == status and error["error"]["code"] == code, error
    assert error["error"]["message"]
    # Nothing was applied, and the stream still works.
    await comm.send_json_to({"type": "ack", "receipts": [held["receipt"]]})
    after = await frame(comm)
    assert after["acked"] == [str(ids[0])] and [m["id"] for m in after["messages"]] == [str(ids[1])]
    await comm.disconnect()


@pytest.mark.parametrize(
    ("queue", "query", "scopes", "pattern", "close", "code"),
    [
        ("q", "", None, "*", 4401, "unauthorized"),
        ("q", "", "bad", "*", 4401, "unauthorized"),
        ("q", "", "produce", "*", 4403, "forbidden"),
        ("q", "", "consume", "other-*", 4403, "forbidden"),
        ("nope", "", "consume", "*", 4404, "queue_not_found"),
        ("q", "?prefetch=0", "consume", "*", 4422, "invalid_value"),
        ("q", "?prefetch=1001", "consume", "*", 4422, "invalid_value"),
        ("q", "?prefetch=many", "consume", "*", 4400, "bad_request"),
        ("q", "?window=5", "consume", "*", 4422, "invalid_value"),
        ("q", "?consumer=c-unknown", "consume", "*", 4404, "consumer_not_found"),
    ],
)
async def test_a_refused_stream_gets_the_error_then_closes_with_4000_plus_its_status(queue, query, scopes, pattern, close, code):
    await sync_to_async(make_queue)("q")
    await sync_to_async(send)("q", "kept")
    if scopes is None:
        token = None
    elif scopes == "bad":
        token = "nobody.secret"
    else:
        token = await sync_to_async(make_token)(scopes, pattern)
    comm = communicator(queue, token, query)
    connected, _ = await comm.connect()
    assert connected  # accepted, so that the client can read why it is refused
    error = await frame(comm)
    assert error["type"] == "error" and error["error"]["code"] == code and error["status"] == close - 4000
    closed = await comm.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": close}
    await comm.wait(timeout=5)
    assert list(await sync_to_async(states)("q")) == ["ready"]  # nothing was leased


async def test_a_valid_token_opens_a_stream_from_a_braked_address_and_a_bad_one_is_braked():
    from queues.api import auth

    await sync_to_async(make_queue)("q")
    auth.forget()
    address = "unknown"  # the test scope has no client address
    for _ in range(auth.AUTH_FAILURES_ALLOWED):
        auth.brake(address)
    comm = await opened("q")
    await comm.disconnect()
    refused = communicator("q", "mq0000.guess")
    connected, _ = await refused.connect()
    assert connected
    error = await frame(refused)
    assert error["error"]["code"] == "too_many_failed_auth"
    await refused.wait(timeout=5)
    auth.forget()


async def test_an_expired_lease_frees_its_slot():
    await sync_to_async(make_queue)("slow", visibility_timeout=1)
    ids = await sync_to_async(send)("slow", "first", "second")
    comm = await opened("slow", "?prefetch=1")
    assert [m["id"] for m in (await frame(comm))["messages"]] == [str(ids[0])]
    # Never acked: after its second the slot is free again, and the stream
    # takes what is ready.
    nxt = await frame(comm, timeout=4)
    assert nxt["messages"] and nxt["messages"][0]["id"] in (str(ids[0]), str(ids[1]))
    await comm.disconnect()


@pytest.mark.parametrize("cap", [20, 0], ids=["on-the-loop", "on-its-thread"])
async def test_a_lapsed_lease_comes_back_to_the_stream_without_the_monitor(monkeypatch, cap):
    # On PostgreSQL, under the cap, the look that finds it runs on the loop
    # and releases it on a thread; past the cap (and on SQLite) the whole
    # look runs on the stream's thread.
    from queues.broker import claim

    released_apart = []
    real = claim._arelease_lapsed_apart

    async def counted(step: Any) -> int:
        released_apart.append(step)
        return await real(step)

    monkeypatch.setattr(claim, "_arelease_lapsed_apart", counted)
    monkeypatch.setattr(settings, "MQ_STREAM_DB_CONNECTIONS", cap)
    await sync_to_async(make_queue)("lapse", visibility_timeout=1)
    [mid] = await sync_to_async(send)("lapse", "once")
    comm = await opened("lapse", "?prefetch=1")
    first = (await frame(comm))["messages"][0]
    again = (await frame(comm, timeout=4))["messages"]
    assert [(m["id"], m["delivery_count"]) for m in again] == [(str(mid), 2)]
    assert len(released_apart) == (1 if cap and connection.vendor == "postgresql" else 0)
    await comm.send_json_to({"type": "ack", "receipts": [first["receipt"]]})
    assert (await frame(comm))["stale"] == [first["receipt"]]
    await comm.disconnect()
    counts = (await sync_to_async(broker.queue_counts)())[(await sync_to_async(broker.get_queue)("lapse")).id]
    assert counts.totals["redelivered_total"] == 2  # by the receive, then by the stream's close


async def test_a_fifo_group_is_delivered_in_order_one_at_a_time():
    await sync_to_async(make_queue)("fifo", fifo=True)
    ids = await sync_to_async(send)("fifo", 1, 2, 3, group="table-7")
    comm = await opened("fifo", "?prefetch=3")
    seen = []
    held = (await frame(comm))["messages"]
    while held:
        assert len(held) == 1  # one of the group in flight at a time
        seen.append(held[0]["id"])
        if len(seen) == 3:
            break
        await comm.send_json_to({"type": "ack", "receipts": [held[0]["receipt"]]})
        held = (await frame(comm))["messages"]
    assert seen == [str(i) for i in ids]
    await comm.disconnect()


async def test_a_stream_takes_nothing_from_a_paused_queue_until_it_resumes():
    await sync_to_async(make_queue)("paused", paused=True)
    await sync_to_async(send)("paused", "later")
    comm = await opened("paused")
    assert await comm.receive_nothing(timeout=0.5)
    await sync_to_async(make_queue)("paused", paused=False)
    got = await frame(comm, timeout=4)
    assert [m["body"] for m in got["messages"]] == ["later"]
    await comm.disconnect()


async def test_a_deleted_queue_ends_its_streams():
    await sync_to_async(make_queue)("doomed")
    comm = await opened("doomed")
    await sync_to_async(lambda: broker.delete_queue(broker.get_queue("doomed")))()
    error = await frame(comm, timeout=4)
    assert error["error"]["code"] == "queue_not_found"
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4404}
    await comm.wait(timeout=5)


postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="looks on the loop are PostgreSQL's")


async def drain_one_by_one(comm: WebsocketCommunicator, n: int) -> list[str]:
    got: list[str] = []
    held = (await frame(comm))["messages"]
    while held:
        got += [m["id"] for m in held]
        if len(got) >= n:
            break
        await comm.send_json_to({"type": "ack", "receipts": [m["receipt"] for m in held]})
        answer = await frame(comm)
        held = answer["messages"]
    return got


@postgres_only
@pytest.mark.parametrize("cap", [20, 0], ids=["on-the-loop", "past-the-cap"])
async def test_on_postgresql_a_busy_stream_claims_on_the_loop_over_a_connection_it_gives_back(monkeypatch, cap):
    """Under the cap a stream's looks run on the loop (none on its thread);
    past it, on its thread over the pool, as every look on SQLite."""
    from queues.api import stream

    thread_looks = []
    real = stream.ConsumeStream.look

    def counted(self: Any, *args: Any) -> Any:
        thread_looks.append(args)
        return real(self, *args)

    monkeypatch.setattr(stream.ConsumeStream, "look", counted)
    monkeypatch.setattr(settings, "MQ_STREAM_DB_CONNECTIONS", cap)
    await sync_to_async(make_queue)("loop")
    ids = await sync_to_async(send)("loop", *range(6))
    comm = await opened("loop", "?prefetch=1")
    assert await drain_one_by_one(comm, 6) == [str(i) for i in ids]
    assert stream._loop_connections == (1 if cap else 0)
    assert (len(thread_looks) == 0) == bool(cap), len(thread_looks)
    await comm.disconnect()
    assert stream._loop_connections == 0
    # The last one was held when the stream closed: ready again; the rest acked.
    assert await sync_to_async(states)("loop") == {"ready": [(ids[5], 1)]}


@postgres_only
async def test_a_quiet_stream_gives_its_connection_back_and_takes_one_again_when_busy(monkeypatch):
    from queues.api import stream

    monkeypatch.setattr(stream, "QUIET_SECONDS", 0.3)
    await sync_to_async(make_queue)("quiet")
    [first] = await sync_to_async(send)("quiet", "first")
    comm = await opened("quiet", "?prefetch=5")
    got = await frame(comm)
    await comm.send_json_to({"type": "ack", "receipts": [got["messages"][0]["receipt"]]})
    assert (await frame(comm))["acked"] == [str(first)]
    assert await comm.receive_nothing(timeout=0.8)  # looks find nothing for longer than QUIET_SECONDS
    assert stream._loop_connections == 0
    [second] = await sync_to_async(send)("quiet", "second")
    got = await frame(comm)  # handed over by the send, or found by a recheck
    assert [m["id"] for m in got["messages"]] == [str(second)]
    await comm.send_json_to({"type": "ack", "receipts": [got["messages"][0]["receipt"]]})
    assert (await frame(comm))["acked"] == [str(second)]
    await comm.disconnect()
    assert stream._loop_connections == 0
    assert await sync_to_async(states)("quiet") == {}


@postgres_only
async def test_a_look_on_the_loop_cut_short_by_a_hang_up_releases_what_it_leased(monkeypatch):
    from queues.api import stream

    looked = asyncio.Event()
    real = stream.ConsumeStream.look_here

    async def slow_look(self: Any, *args: Any) -> Any:
        result = await real(self, *args)
        looked.set()
        await asyncio.sleep(0.5)  # the client hangs up meanwhile
        return result

    monkeypatch.setattr(stream.ConsumeStream, "look_here", slow_look)
    await sync_to_async(make_queue)("hangup")
    ids = await sync_to_async(send)("hangup", "a", "b")
    comm = await opened("hangup", "?prefetch=2")
    await asyncio.wait_for(looked.wait(), 5)
    await comm.disconnect()
    deadline = time.monotonic() + 5
    # Leased, never delivered: ready again at once, not at the visibility
    # timeout, and not counted as a delivery.
    while (left := await sync_to_async(states)("hangup")) != {"ready": [(ids[0], 0), (ids[1], 0)]} and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert left == {"ready": [(ids[0], 0), (ids[1], 0)]}, left
    assert stream._loop_connections == 0


async def test_streams_racing_over_one_queue_never_hold_the_same_message():
    """Four in-process streams with small windows, acking as they go."""
    await sync_to_async(make_queue)("race")
    total = 400
    ids = set(await sync_to_async(send)("race", *range(total)))
    token = await sync_to_async(make_token)()
    comms = [await opened("race", "?prefetch=3", token) for _ in range(4)]
    seen: list[str] = []

    async def drain(comm: WebsocketCommunicator) -> None:
        while len(seen) < total:
            # (A communicator's receive that times out cancels the app.)
            if await comm.receive_nothing(timeout=0.1, interval=0.01):
                continue
            got = await frame(comm)
            receipts = [m["receipt"] for m in got["messages"]]
            seen.extend(m["id"] for m in got["messages"])
            if receipts:
                await comm.send_json_to({"type": "ack", "receipts": receipts})

    await asyncio.wait_for(asyncio.gather(*(drain(c) for c in comms)), 60)
    for comm in comms:
        await comm.disconnect()
    assert sorted(seen) == sorted(str(i) for i in ids)  # each delivered once: no lease expired
    assert await sync_to_async(states)("race") == {}


# --------------------------------------------------------------------------- #
# Publish streams
# --------------------------------------------------------------------------- #


def publisher(queue: str, token: str | None, query: str = "") -> WebsocketCommunicator:
    from mqadmin.asgi import application

    headers = [(b"host", b"testserver")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return WebsocketCommunicator(application, f"/api/v1/queues/{queue}/publish{query}", headers=headers)


async def opened_publisher(queue: str) -> WebsocketCommunicator:
    comm = publisher(queue, await sync_to_async(make_token)("produce"))
    assert (await comm.connect())[0]
    assert await frame(comm) == {"type": "ready", "queue": queue}
    return comm


def bodies(name: str) -> list[Any]:
    return [json.loads(b) for b in Message.objects.filter(queue__name=name).order_by("id").values_list("body", flat=True)]


async def test_send_frames_are_answered_in_order_and_those_that_wait_share_a_commit(monkeypatch):
    await sync_to_async(make_queue)("orders")
    commits: list[int] = []
    publish = broker.publish

    def counted(queue: Any, messages: Any, **kw: Any) -> Any:
        commits.append(len(messages))
        return publish(queue, messages, **kw)

    monkeypatch.setattr(broker, "publish", counted)
    comm = await opened_publisher("orders")
    ids: list[Any] = ["first", 2, None, *range(3, 12)]
    for n, frame_id in enumerate(ids):
        frame_out: dict[str, Any] = {"type": "send", "messages": [{"body": [n, i]} for i in range(3)]}
        if frame_id is not None:
            frame_out["id"] = frame_id
        await comm.send_json_to(frame_out)
    answers = [await frame(comm) for _ in ids]
    assert [a["type"] for a in answers] == ["sent"] * len(ids)
    assert [a.get("id") for a in answers] == ids
    sent_ids = [int(m["id"]) for a in answers for m in a["messages"]]
    assert sent_ids == sorted(sent_ids) and len(sent_ids) == 3 * len(ids)
    await comm.disconnect()
    assert await sync_to_async(bodies)("orders") == [[n, i] for n in range(len(ids)) for i in range(3)]
    # Frames that arrived during a commit went in the next one together.
    assert sum(commits) == 3 * len(ids) and len(commits) < len(ids)


async def test_a_refused_send_frame_is_only_its_own(monkeypatch):
    await sync_to_async(make_queue)("small", max_message_bytes=50)
    monkeypatch.setattr("queues.api.publish_stream.FRAMES_PER_COMMIT", 16)
    comm = await opened_publisher("small")
    await comm.send_json_to({"type": "send", "id": 1, "messages": [{"body": "ok-1"}]})
    await comm.send_json_to({"type": "send", "id": 2, "messages": [{"body": "ok-2"}, {"body": "x" * 200}]})
    await comm.send_to(text_data='{"type": "send", "id": 3, "messages": [')
    await comm.send_json_to({"type": "send", "id": 4, "messages": [{"body": "ok-4", "priority": 10}]})
    await comm.send_json_to({"type": "send", "id": 5, "messages": [{"body": "ok-5"}]})
    await comm.send_json_to({"type": "purge"})
    answers = [await frame(comm) for _ in range(6)]
    assert [(a["type"], a.get("id")) for a in answers] == [
        ("sent", 1),
        ("error", 2),
        ("error", None),  # not JSON: no id to echo
        ("error", 4),
        ("sent", 5),
        ("error", None),
    ]
    assert [(a["status"], a["error"]["code"]) for a in answers if a["type"] == "error"] == [
        (413, "message_too_large"),
        (400, "bad_request"),
        (422, "invalid_value"),
        (400, "bad_request"),
    ]
    await comm.disconnect()
    assert await sync_to_async(bodies)("small") == ["ok-1", "ok-5"]  # all or nothing per frame


async def test_frames_sent_just_before_closing_are_still_written():
    await sync_to_async(make_queue)("hasty")
    comm = await opened_publisher("hasty")
    for n in range(20):
        await comm.send_json_to({"type": "send", "messages": [{"body": n}]})
    await comm.disconnect()
    assert await sync_to_async(bodies)("hasty") == list(range(20))


async def test_the_next_frames_are_parsed_while_a_commit_runs(monkeypatch):
    """Frame 1's commit waits until frame 2, sent after that commit began,
    has been parsed: parsed on the stream's commit thread, after the commit,
    it never would be."""
    import threading

    from queues.api import publish_stream

    await sync_to_async(make_queue)("busy")
    committing, parsed_second = threading.Event(), threading.Event()
    parse_send, publish = publish_stream.parse_send, broker.publish

    def noting_parse(data: Any) -> Any:
        sent = parse_send(data)
        if sent.id == 2:
            parsed_second.set()
        return sent

    def waiting_publish(queue: Any, messages: Any, **kw: Any) -> Any:
        committing.set()
        if messages[0].body == b"1" and not parsed_second.wait(5):
            raise AssertionError("frame 2 was not parsed while frame 1's commit ran")
        return publish(queue, messages, **kw)

    monkeypatch.setattr(publish_stream, "parse_send", noting_parse)
    monkeypatch.setattr(broker, "publish", waiting_publish)
    comm = await opened_publisher("busy")
    await comm.send_json_to({"type": "send", "id": 1, "messages": [{"body": 1}]})
    assert await asyncio.to_thread(committing.wait, 5)
    await comm.send_json_to({"type": "send", "id": 2, "messages": [{"body": 2}]})
    answers = [await frame(comm, timeout=10) for _ in range(2)]
    assert [(a["type"], a.get("id")) for a in answers] == [("sent", 1), ("sent", 2)]
    await comm.disconnect()
    assert await sync_to_async(bodies)("busy") == [1, 2]


async def test_a_parse_that_breaks_ends_the_publish_stream_as_internal(monkeypatch):
    from queues.api import publish_stream

    def broken(data: Any) -> Any:
        raise RuntimeError("a bug")

    await sync_to_async(make_queue)("fragile")
    monkeypatch.setattr(publish_stream, "parse_send", broken)
    comm = await opened_publisher("fragile")
    await comm.send_json_to({"type": "send", "id": 1, "messages": [{"body": 1}]})
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 1011}
    await comm.wait(timeout=5)
    assert await sync_to_async(bodies)("fragile") == []


@pytest.mark.parametrize(
    ("queue", "query", "scopes", "close", "code"),
    [
        ("p", "", "consume", 4403, "forbidden"),
        ("nope", "", "produce", 4404, "queue_not_found"),
        ("p", "?window=3", "produce", 4422, "invalid_value"),
    ],
)
async def test_a_refused_publish_stream_gets_the_error_then_closes(queue, query, scopes, close, code):
    await sync_to_async(make_queue)("p")
    comm = publisher(queue, await sync_to_async(make_token)(scopes), query)
    assert (await comm.connect())[0]
    error = await frame(comm)
    assert error["error"]["code"] == code and error["status"] == close - 4000
    assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": close}
    await comm.wait(timeout=5)
