"""Messages over the JSON API: send, receive, ack, nack, extend, browse,
FIFO groups, paused queues, consumers and long polling (contract section 2,
"Messages")."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest
from django.db import connection

from conftest import served_handler
from queues import broker, monitor, notify
from queues.models import Consumer, ConsumerStatus, Message

from .workers import wait_for


def later(seconds: float) -> None:
    """Let the monitor see a clock ``seconds`` ahead: leases and delays due by then act."""
    monitor.tick(now=time.time() + seconds)


# -------------------------------------------------------------------- send --


def test_send_single_message(api):
    api.make_queue("jobs")
    r = api.post("queues/jobs/messages", {"body": {"order": 1}})
    assert r.status_code == 201
    (sent,) = r.data["messages"]
    assert sent["duplicate"] is False and sent["id"]
    (got,) = api.receive("jobs")
    assert got["id"] == sent["id"] and got["body"] == {"order": 1}


def test_send_batch_returns_ids_in_input_order(api):
    api.make_queue("jobs")
    r = api.post("queues/jobs/messages", {"messages": [{"body": i} for i in range(100)]})
    assert r.status_code == 201
    ids = [m["id"] for m in r.data["messages"]]
    assert len(set(ids)) == 100
    got = api.receive("jobs", max=100)
    assert [m["id"] for m in got] == ids
    assert [m["body"] for m in got] == list(range(100))


@pytest.mark.parametrize("body", [None, 0, 1.5, "text", [1, [2]], {"nested": {"x": [True, None]}}, ""])
def test_any_json_body_round_trips(api, body):
    api.make_queue("jobs")
    api.send("jobs", body)
    assert api.receive("jobs")[0]["body"] == body


def test_delivery_carries_every_field(api):
    api.make_queue("jobs")
    api.post("queues/jobs/messages", {"body": "x", "headers": {"trace": "abc"}, "priority": 4})
    (m,) = api.receive("jobs", visibility_timeout=60)
    fields = "id body headers priority group delivery_count enqueued_at receipt lease_expires_at"
    assert set(m) == set(fields.split())
    assert m["headers"] == {"trace": "abc"} and m["priority"] == 4 and m["group"] is None
    assert m["delivery_count"] == 1
    assert m["enqueued_at"].endswith("Z") and m["lease_expires_at"].endswith("Z")


def test_priority_first_then_oldest(api):
    api.make_queue("jobs")
    api.send("jobs", "low-1")
    api.send("jobs", "high-1", priority=9)
    api.send("jobs", "low-2")
    api.send("jobs", "mid", priority=5)
    api.send("jobs", "high-2", priority=9)
    got = api.receive("jobs", max=10)
    assert [m["body"] for m in got] == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_delayed_message_waits(api):
    api.make_queue("jobs")
    api.send("jobs", "later", delay=30)
    assert api.receive("jobs") == []
    assert api.counts("jobs")["delayed"] == 1
    later(31)
    assert [m["body"] for m in api.receive("jobs")] == ["later"]


def test_dedup_within_window_even_after_ack(api):
    api.make_queue("jobs")
    r1 = api.post("queues/jobs/messages", {"body": "a", "dedup_id": "order-7"})
    r2 = api.post("queues/jobs/messages", {"body": "a", "dedup_id": "order-7"})
    assert r2.data["messages"] == [{"id": r1.data["messages"][0]["id"], "duplicate": True}]
    (m,) = api.receive("jobs", max=10)
    api.ack("jobs", m["receipt"])
    r3 = api.post("queues/jobs/messages", {"body": "a", "dedup_id": "order-7"})
    assert r3.data["messages"][0]["duplicate"] is True
    assert api.receive("jobs") == []


def test_dedup_within_one_batch(api):
    api.make_queue("jobs")
    r = api.post(
        "queues/jobs/messages",
        {"messages": [{"body": 1, "dedup_id": "k"}, {"body": 2}, {"body": 3, "dedup_id": "k"}]},
    )
    out = r.data["messages"]
    assert [m["duplicate"] for m in out] == [False, False, True]
    assert out[2]["id"] == out[0]["id"]
    assert [m["body"] for m in api.receive("jobs", max=10)] == [1, 2]


# ------------------------------------------------------ leases and receipts --


def test_expired_visibility_timeout_redelivers_with_count_plus_one(api):
    api.make_queue("jobs", visibility_timeout=5)
    api.send("jobs", "x")
    (first,) = api.receive("jobs")
    assert api.receive("jobs") == []
    later(6)
    (again,) = api.receive("jobs")
    assert again["id"] == first["id"] and again["delivery_count"] == 2
    assert api.ack("jobs", first["receipt"]) == {"acked": [], "stale": [first["receipt"]]}
    assert Message.objects.filter(pk=first["id"]).exists()
    assert api.ack("jobs", again["receipt"]) == {"acked": [again["id"]], "stale": []}


def test_receive_visibility_timeout_overrides_the_queue(api):
    api.make_queue("jobs", visibility_timeout=600)
    api.send("jobs", "x")
    api.receive("jobs", visibility_timeout=2)
    later(3)
    assert api.receive("jobs")[0]["delivery_count"] == 2


def test_already_acked_receipt_is_stale(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    (m,) = api.receive("jobs")
    assert api.ack("jobs", m["receipt"])["acked"] == [m["id"]]
    assert api.ack("jobs", m["receipt"]) == {"acked": [], "stale": [m["receipt"]]}


def test_a_receive_can_carry_the_acks_of_what_was_finished(api):
    api.make_queue("jobs")
    api.send("jobs", "a", "b", "c")
    first = api.receive("jobs", max=2)
    api.receive("jobs")  # leases "c"
    r = api.post("queues/jobs/receive", {"max": 10, "ack": [m["receipt"] for m in first]})
    assert r.status_code == 200, r.content
    assert sorted(r.data["acked"]) == sorted(m["id"] for m in first) and r.data["stale"] == []
    assert [m["body"] for m in r.data["messages"]] == []  # "c" was leased by the call above
    counts = api.counts("jobs")
    assert (counts["ready"], counts["in_flight"]) == (0, 1)
    assert not Message.objects.filter(id__in=[int(m["id"]) for m in first]).exists()


def test_acks_on_a_receive_report_stale_receipts_and_answer_an_empty_list(api):
    api.make_queue("jobs")
    api.send("jobs", "a", "b")
    (m,) = api.receive("jobs")
    api.ack("jobs", m["receipt"])
    r = api.post("queues/jobs/receive", {"ack": [m["receipt"]]})
    assert r.data["acked"] == [] and r.data["stale"] == [m["receipt"]]
    assert [x["body"] for x in r.data["messages"]] == ["b"]
    assert api.post("queues/jobs/receive", {"ack": []}).data == {"messages": [], "acked": [], "stale": []}
    # Without "ack" the answer is the contract's plain one.
    assert api.post("queues/jobs/receive", {}).data == {"messages": []}


@pytest.mark.parametrize(
    ("ack", "status"),
    [(["x"] * 1001, 422), ([""], 422), (["a" * 201], 422), ("not-a-list", 400), ([1, 2], 400)],
    ids=["too-many", "empty-receipt", "too-long", "not-a-list", "not-strings"],
)
def test_bad_acks_on_a_receive_are_refused_and_nothing_is_acked_or_leased(api, ack, status):
    api.make_queue("jobs")
    api.send("jobs", "a", "b")
    (m,) = api.receive("jobs")
    r = api.post("queues/jobs/receive", {"ack": [m["receipt"], *ack] if isinstance(ack, list) else ack})
    assert r.status_code == status, r.content
    counts = api.counts("jobs")
    assert (counts["ready"], counts["in_flight"]) == (1, 1)


def test_acks_on_a_receive_for_an_unknown_consumer_ack_nothing(api):
    api.make_queue("jobs")
    api.send("jobs", "a", "b")
    (m,) = api.receive("jobs")
    r = api.post("queues/jobs/receive", {"consumer": "nobody", "ack": [m["receipt"]]})
    assert r.status_code == 404 and r.data["error"]["code"] == "consumer_not_found"
    counts = api.counts("jobs")
    assert (counts["ready"], counts["in_flight"]) == (1, 1)


def test_nack_with_delay_and_reason(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    (m,) = api.receive("jobs")
    r = api.post("queues/jobs/nack", {"receipts": [m["receipt"]], "delay": 20, "reason": "db down"})
    assert r.status_code == 200 and r.data == {"nacked": [m["id"]], "stale": []}
    assert api.receive("jobs") == []
    assert api.counts("jobs")["delayed"] == 1
    assert Message.objects.get(pk=m["id"]).last_error == "db down"
    later(21)
    (again,) = api.receive("jobs")
    assert again["delivery_count"] == 2


def test_nack_past_max_deliveries_goes_to_dlq(api):
    api.make_queue("dlq")
    api.make_queue("jobs", max_deliveries=2, dead_letter_queue="dlq")
    api.send("jobs", "poison")
    for _ in range(2):
        (m,) = api.receive("jobs")
        api.post("queues/jobs/nack", {"receipts": [m["receipt"]]})
    assert api.receive("jobs") == []
    assert api.counts("jobs")["dead"] == 1
    (dead,) = api.receive("dlq")
    assert dead["body"] == "poison" and dead["id"] == m["id"]


def test_expiry_past_max_deliveries_without_dlq_is_state_dead(api):
    api.make_queue("jobs", max_deliveries=1)
    api.send("jobs", "poison")
    api.receive("jobs", visibility_timeout=1)
    later(2)
    assert api.receive("jobs") == []
    (m,) = api.get("queues/jobs/messages?state=dead").data["messages"]
    assert m["body"] == "poison" and m["state"] == "dead"


def test_max_deliveries_zero_never_dead_letters(api):
    api.make_queue("jobs", max_deliveries=0)
    api.send("jobs", "x")
    for n in range(1, 8):
        (m,) = api.receive("jobs")
        assert m["delivery_count"] == n
        api.post("queues/jobs/nack", {"receipts": [m["receipt"]]})
    assert api.counts("jobs")["dead"] == 0


def test_extend_keeps_the_lease(api):
    api.make_queue("jobs", visibility_timeout=2)
    api.send("jobs", "x")
    (m,) = api.receive("jobs")
    r = api.post("queues/jobs/extend", {"receipts": [m["receipt"]], "visibility_timeout": 600})
    assert r.status_code == 200
    assert r.data["extended"] == [m["id"]] and r.data["stale"] == []
    assert r.data["lease_expires_at"] > m["lease_expires_at"]
    later(60)
    assert api.receive("jobs") == []
    assert api.ack("jobs", m["receipt"])["acked"] == [m["id"]]


def test_extend_of_stale_receipt_reports_it(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    (m,) = api.receive("jobs")
    api.ack("jobs", m["receipt"])
    r = api.post("queues/jobs/extend", {"receipts": [m["receipt"]], "visibility_timeout": 10})
    assert r.data["extended"] == [] and r.data["stale"] == [m["receipt"]]


# ------------------------------------------------------------------ browse --


def test_browse_by_state_pages_with_after_and_does_not_lease(api):
    api.make_queue("jobs")
    ids = api.send("jobs", *range(5))
    api.send("jobs", "later", delay=60)
    seen, after = [], None
    while True:
        path = "queues/jobs/messages?state=ready&limit=2" + (f"&after={after}" if after else "")
        r = api.get(path)
        assert r.status_code == 200
        seen += [m["id"] for m in r.data["messages"]]
        after = r.data["next"]
        if after is None:
            break
    assert seen == ids
    assert api.counts("jobs")["in_flight"] == 0
    (d,) = api.get("queues/jobs/messages?state=delayed").data["messages"]
    assert d["body"] == "later"
    api.receive("jobs", max=2)
    in_flight = api.get("queues/jobs/messages?state=in_flight").data["messages"]
    assert [m["id"] for m in in_flight] == ids[:2]
    assert all(m["lease_expires_at"] for m in in_flight)


def test_browse_defaults_to_ready(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    assert [m["body"] for m in api.get("queues/jobs/messages").data["messages"]] == ["x"]


def test_browse_needs_admin_scope(api, token_factory):
    api.make_queue("jobs")
    consumer = token_factory("produce,consume")
    r = consumer.get("queues/jobs/messages")
    assert r.status_code == 403 and r.data["error"]["code"] == "forbidden"


# ------------------------------------------------------------- FIFO groups --


def test_fifo_one_in_flight_per_group_in_enqueue_order(api):
    api.make_queue("jobs", fifo=True)
    api.send("jobs", "a1", "a2", group="a")
    api.send("jobs", "b1", "b2", group="b")
    got = api.receive("jobs", max=10)
    assert sorted(m["body"] for m in got) == ["a1", "b1"]
    assert {m["group"] for m in got} == {"a", "b"}
    assert api.receive("jobs", max=10) == []
    a1 = next(m for m in got if m["body"] == "a1")
    api.ack("jobs", a1["receipt"])
    assert [m["body"] for m in api.receive("jobs", max=10)] == ["a2"]


def test_fifo_after_nack_the_same_message_comes_first(api):
    api.make_queue("jobs", fifo=True)
    api.send("jobs", "1", "2", "3", group="g")
    (m,) = api.receive("jobs", max=10)
    api.post("queues/jobs/nack", {"receipts": [m["receipt"]]})
    (again,) = api.receive("jobs", max=10)
    assert again["id"] == m["id"] and again["body"] == "1" and again["delivery_count"] == 2


# ------------------------------------------------------- paused, consumers --


def test_paused_queue_delivers_nothing(api):
    api.make_queue("jobs", paused=True)
    api.send("jobs", "x")
    assert api.receive("jobs", max=10) == []
    assert api.counts("jobs")["ready"] == 1
    api.put("queues/jobs", {"paused": False})
    assert [m["body"] for m in api.receive("jobs")] == ["x"]


def test_receive_with_a_registered_consumer_records_it(api):
    api.make_queue("jobs")
    r = api.post("consumers", {"name": "worker-1", "queues": ["jobs"]})
    assert r.status_code == 201
    cid = r.data["id"]
    api.send("jobs", "x", "y")
    got = api.receive("jobs", max=2, consumer=cid)
    assert len(got) == 2
    assert set(Message.objects.values_list("consumer_id", flat=True)) == {cid}
    listed = {c["id"]: c for c in api.get("consumers").data["consumers"]}
    assert listed[cid]["in_flight"] == 2


def test_receive_with_an_unknown_consumer_is_404(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    r = api.post("queues/jobs/receive", {"consumer": "nobody"})
    assert r.status_code == 404 and r.data["error"]["code"] == "consumer_not_found"
    assert api.counts("jobs")["ready"] == 1


# -------------------------------------------------------------- long poll --


def test_receive_with_wait_and_nothing_sent_returns_empty(api):
    api.make_queue("jobs")
    started = time.monotonic()
    assert api.receive("jobs", wait=0.3) == []
    assert time.monotonic() - started >= 0.3


def waiting_receive(tapi, queue: str, **body) -> tuple[threading.Thread, dict]:
    """A receive on another thread (its own connection), given time to
    start waiting. The result dict gets its messages and when it ended."""
    result: dict = {}

    def run() -> None:
        try:
            result["messages"] = tapi.receive(queue, **body)
            result["ended"] = time.monotonic()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)  # the receive is waiting by now
    return thread, result


def test_long_poll_wakes_early_when_a_message_arrives(tapi, monkeypatch):
    """A receive waiting up to 3 s returns soon after a send from another
    thread. Its periodic re-check is pushed out of the way, so only the
    wake-up can end the wait early."""

    monkeypatch.setattr(notify, "RECHECK_SECONDS", 30.0)
    tapi.make_queue("jobs")
    waiter, result = waiting_receive(tapi, "jobs", wait=3)
    sent_at = time.monotonic()
    broker.publish(broker.get_queue("jobs"), [broker.NewMessage(body=b'"hello"')])
    waiter.join(5)
    assert not waiter.is_alive()
    assert [m["body"] for m in result["messages"]] == ["hello"]
    # Woken by the send, long before the 3 s deadline.
    assert result["ended"] - sent_at < 1.5, result["ended"] - sent_at


def test_a_send_hands_its_messages_to_a_receive_waiting_in_this_process(tapi, monkeypatch):
    """The send leases its new messages to the waiting receive in its own
    INSERT: the receive answers without a claim of its own, with the
    messages a claim would have chosen (highest priority, then oldest, up
    to its max), on leases as real as a claim's."""
    from queues.broker import waiting

    monkeypatch.setattr(notify, "RECHECK_SECONDS", 30.0)
    tapi.make_queue("jobs", visibility_timeout=120)
    cid = tapi.post("consumers", {"name": "w", "queues": ["jobs"]}).data["id"]
    looks: list[dict] = []
    claim = waiting.receive
    monkeypatch.setattr(waiting, "receive", lambda queue, **kw: looks.append(kw) or claim(queue, **kw))
    waiter, result = waiting_receive(tapi, "jobs", wait=3, max=2, consumer=cid, visibility_timeout=60)
    sent_at = time.time()
    new = [broker.NewMessage(body=b'"a"'), broker.NewMessage(body=b'"b"', priority=5), broker.NewMessage(body=b'"c"')]
    broker.publish(broker.get_queue("jobs"), new)
    waiter.join(5)
    got = result["messages"]
    assert [m["body"] for m in got] == ["b", "a"]
    assert len(looks) == 1  # the first look (empty): no claim after the send
    assert [m["delivery_count"] for m in got] == [1, 1]
    expires = datetime.fromisoformat(got[0]["lease_expires_at"]).timestamp()
    assert sent_at + 55 < expires < sent_at + 65  # the receive's visibility timeout
    counts = broker.queue_counts()[broker.get_queue("jobs").id]
    assert (counts.ready, counts.in_flight, counts.totals["received_total"], counts.totals["sent_total"]) == (1, 2, 2, 3)
    held = Message.objects.filter(queue__name="jobs", state="in_flight")
    assert sorted(held.values_list("consumer_id", flat=True)) == [cid, cid]
    assert tapi.ack("jobs", *(m["receipt"] for m in got))["acked"] == [m["id"] for m in got]
    assert [m["body"] for m in tapi.receive("jobs")] == ["c"]


def test_a_send_hands_nothing_to_a_receive_whose_consumer_was_declared_dead_meanwhile(tapi, monkeypatch):
    # The receive checked its consumer before it waited. Handed the message,
    # it would hold it for a dead consumer until the monitor took it back.

    monkeypatch.setattr(notify, "RECHECK_SECONDS", 30.0)
    tapi.make_queue("jobs")
    cid = tapi.post("consumers", {"name": "w", "queues": ["jobs"]}).data["id"]
    waiter, result = waiting_receive(tapi, "jobs", wait=1, consumer=cid)
    Consumer.objects.filter(pk=cid).update(status=ConsumerStatus.DEAD, dead_at=time.time())
    broker.publish(broker.get_queue("jobs"), [broker.NewMessage(body=b'"for the living"')])
    waiter.join(5)
    assert result["messages"] == []
    assert tapi.counts("jobs")["ready"] == 1
    assert not Message.objects.filter(consumer_id=cid).exists()
    assert [m["body"] for m in tapi.receive("jobs")] == ["for the living"]


def test_a_send_inside_a_callers_transaction_hands_nothing(tapi, monkeypatch):
    # Were the caller to roll back after the send returned, the handed
    # messages would not exist: the receive looks for itself after the commit.
    from django.db import transaction


    monkeypatch.setattr(notify, "RECHECK_SECONDS", 30.0)
    tapi.make_queue("jobs")
    waiter, result = waiting_receive(tapi, "jobs", wait=3)
    with transaction.atomic():
        broker.publish(broker.get_queue("jobs"), [broker.NewMessage(body=b'"kept"')])
        assert broker.queue_counts()[broker.get_queue("jobs").id].in_flight == 0
    waiter.join(5)
    assert [m["body"] for m in result["messages"]] == ["kept"]
    assert broker.queue_counts()[broker.get_queue("jobs").id].totals["received_total"] == 1


@pytest.mark.parametrize("handler", ["django", "served"])
@pytest.mark.parametrize("acks", [False, True], ids=["receive", "ack_and_receive"])
def test_what_a_receive_leased_is_ready_again_at_once_when_its_client_hangs_up_during_the_claim(tapi, monkeypatch, acks, handler):
    """A view whose client disconnects is cancelled (by Django's ASGI
    handler, or the one `mq serve` runs). The claim it was waiting for
    still runs to the end on its thread; what it leased is ready again at
    once, as if never delivered, not in an hour at its visibility timeout.
    Acks that rode on the receive stay done."""
    import asyncio
    import json

    if handler == "served":
        application = served_handler()
    else:
        from django.core.asgi import get_asgi_application

        application = get_asgi_application()

    tapi.make_queue("jobs", visibility_timeout=3600)
    tapi.send("jobs", "done")
    (done,) = tapi.receive("jobs")
    waiting = tapi.send("jobs", "a", "b")
    claimed = threading.Event()
    hung_up = threading.Event()
    from queues.broker import claim as claiming

    claim = claiming._claim  # under receive and ack_and_receive

    def slow_claim(*args, **kw):  # type: ignore[no-untyped-def]
        hung_up.wait(5)  # the client is gone before the claim runs
        got = claim(*args, **kw)
        claimed.set()
        return got

    monkeypatch.setattr(claiming, "_claim", slow_claim)
    body = {"max": 10, **({"ack": [done["receipt"]]} if acks else {})}
    sent: list[dict] = []

    async def client() -> None:
        messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.2)
            hung_up.set()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/api/v1/queues/jobs/receive", "raw_path": b"/api/v1/queues/jobs/receive", "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"authorization", tapi.headers["Authorization"].encode())],
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        }
        await application(scope, receive, send)

    asyncio.run(client())
    assert sent == []  # never answered
    assert claimed.wait(5)
    jobs = broker.get_queue("jobs")
    wait_for(lambda: broker.queue_counts()[jobs.id].ready == 2, timeout=5, interval=0.02)
    left = Message.objects.filter(pk__in=[int(i) for i in waiting]).order_by("id")
    assert [(m.state, m.delivery_count, m.lease_token) for m in left] == [("ready", 0, None)] * 2
    assert Message.objects.filter(pk=int(done["id"])).exists() is not acks
    assert broker.queue_counts()[jobs.id].in_flight == (0 if acks else 1)
    assert [m["body"] for m in tapi.receive("jobs", max=10)] == ["a", "b"]


def test_receive_with_a_consumer_that_left_is_410(api):
    api.make_queue("jobs")
    cid = api.post("consumers", {"name": "w", "queues": ["jobs"]}).data["id"]
    assert api.delete(f"consumers/{cid}").status_code == 200
    api.send("jobs", "x")
    r = api.post("queues/jobs/receive", {"consumer": cid})
    assert r.status_code == 410 and r.data["error"]["code"] == "consumer_dead"
    assert api.counts("jobs")["ready"] == 1


def test_long_poll_on_a_paused_queue_wakes_when_it_is_resumed(tapi, monkeypatch):

    monkeypatch.setattr(notify, "RECHECK_SECONDS", 30.0)
    tapi.make_queue("jobs", paused=True)
    tapi.send("jobs", "held")
    waiter, result = waiting_receive(tapi, "jobs", wait=4)
    assert "messages" not in result  # a paused queue delivers nothing
    resumed_at = time.monotonic()
    broker.put_queue("jobs", {"paused": False})
    waiter.join(5)
    assert [m["body"] for m in result["messages"]] == ["held"]
    assert result["ended"] - resumed_at < 1.5, result["ended"] - resumed_at


def served_post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """One POST through the ASGI handler `mq serve` runs."""
    import orjson
    from asgiref.sync import async_to_sync
    from channels.testing import HttpCommunicator

    application = served_handler()

    pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    pairs += [(b"content-type", b"application/json"), (b"host", b"testserver")]
    raw = async_to_sync(HttpCommunicator(application, "POST", path, body=body, headers=pairs).get_response)(timeout=10)
    return raw["status"], orjson.loads(raw["body"]) if raw["body"] else {}


def test_mq_serve_answers_a_receive_that_does_not_wait_on_the_sync_path(tapi, monkeypatch):
    # The sync twin calls broker.first_look by its name; the async view's
    # looks hold their own reference (sync_to_async): the spy sees only the
    # sync path.
    import orjson

    looks: list[tuple] = []
    first_look = broker.first_look
    monkeypatch.setattr(broker, "first_look", lambda *a: looks.append(a) or first_look(*a))
    tapi.make_queue("jobs")
    tapi.send("jobs", "a", "b", "c")
    status, out = served_post("/api/v1/queues/jobs/receive", orjson.dumps({"max": 1}), tapi.headers)
    assert status == 200 and [m["body"] for m in out["messages"]] == ["a"]
    status, out = served_post("/api/v1/queues/jobs/receive", orjson.dumps({"max": 1, "ack": [out["messages"][0]["receipt"]], "wait": 0}), tapi.headers)
    assert status == 200 and [m["body"] for m in out["messages"]] == ["b"] and len(out["acked"]) == 1
    assert len(looks) == 2
    status, out = served_post("/api/v1/queues/jobs/receive", orjson.dumps({"max": 1, "wait": 1}), tapi.headers)
    assert status == 200 and [m["body"] for m in out["messages"]] == ["c"]
    assert len(looks) == 2  # a receive that may wait is the async view's


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b'{"max": 0}', 422, "invalid_value"),
        (b'{"max": 1, "ack": ["nope"]}', 422, "invalid_value"),
        (b'{"max": 1, "consumer": "ghost"}', 404, "consumer_not_found"),
        (b'{"max": 1, "surprise": 1}', 422, "invalid_value"),
        (b'{"max": 1', 400, "bad_request"),
    ],
)
def test_a_receive_that_does_not_wait_fails_as_the_async_view_does(tapi, body, status, code):
    tapi.make_queue("jobs")
    tapi.send("jobs", "kept")
    served = served_post("/api/v1/queues/jobs/receive", body, tapi.headers)
    r = tapi.post("queues/jobs/receive", raw=body)  # Django's test client: the async view
    assert (served[0], r.status_code) == (status, status)
    assert served[1]["error"]["code"] == r.data["error"]["code"] == code
    assert tapi.counts("jobs")["ready"] == 1  # nothing leased, nothing acked
    unknown = served_post("/api/v1/queues/nope/receive", b"{}", tapi.headers)
    assert unknown[0] == 404 and unknown[1]["error"]["code"] == "queue_not_found"


def test_the_sync_receive_path_is_not_part_of_the_api(tapi):
    tapi.make_queue("jobs")
    tapi.send("jobs", "kept")
    status, out = served_post("/api/v1/queues/jobs/receive-now", b"{}", tapi.headers)
    assert status == 404 and out["error"]["code"] == "not_found"
    assert tapi.post("queues/jobs/receive-now", {}).status_code == 404
    assert "/api/v1/queues/{name}/receive-now" not in tapi.get("openapi.json").data["paths"]
    assert tapi.counts("jobs")["ready"] == 1


@pytest.mark.parametrize(
    "body, waits",
    [
        (b"", False), (b"{}", False), (b'{"max": 5}', False), (b'{"wait": 0}', False), (b'{"wait": 0.0}', False),
        (b'{"wait": 1}', True), (b'{"wait": 0.5}', True), (b'{"wait": false}', True), (b'{"wait": "0"}', True),
        (b'{"wait": null}', True), (b"[1]", True), (b"not json", True),
    ],
)
def test_which_receives_may_wait(body, waits):
    from queues.api.views import may_wait

    assert may_wait(body) is waits
