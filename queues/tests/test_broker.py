"""The broker's queue semantics, called directly with a controlled clock
(``now=``): order, delays, dedup, leases, fencing, dead-lettering, redrive,
FIFO groups, and counters that always equal the real counts."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from django.db import connection

from queues import broker, monitor
from queues.exceptions import InvalidValue, MessageTooLarge, QueueInUse, QueueNotFound
from queues.models import Consumer, DedupKey, Message, Queue, QueueStats
from queues.states import MessageState as S

T0 = 1_900_000_000.0  # a fixed "now", well after any real clock in the test run


def make_queue(name: str = "q", **config: Any) -> Queue:
    if "dead_letter_queue" in config and isinstance(config["dead_letter_queue"], Queue):
        config["dead_letter_queue"] = config["dead_letter_queue"].name
    broker.put_queue(name, config)
    return broker.get_queue(name)


def send(queue: Queue, *bodies: Any, now: float = T0, **fields: Any) -> list[str]:
    import orjson

    results = broker.publish(queue, [broker.NewMessage(body=orjson.dumps(b), **fields) for b in bodies], now=now)
    return [r.id for r in results]


def receive(queue: Queue, n: int = 1, *, now: float = T0, **kw: Any) -> list[broker.Delivery]:
    return broker.receive(queue, max_messages=n, now=now, **kw)


def bodies(deliveries: list[broker.Delivery]) -> list[Any]:
    import orjson

    return [orjson.loads(d.body) for d in deliveries]


def real_counts(queue: Queue) -> dict[str, int]:
    """Counts by a full scan of the messages table: the truth to compare with."""
    by_state = Counter(Message.objects.filter(queue=queue).values_list("state", flat=True))
    return {
        "ready": by_state[S.READY],
        "delayed": by_state[S.DELAYED],
        "in_flight": by_state[S.IN_FLIGHT],
        "dead": by_state[S.DEAD] + Message.objects.filter(origin_queue=queue).count(),
    }


def live_counts(queue: Queue, now: float = T0) -> dict[str, int]:
    c = broker.queue_counts([queue.id], now=now)[queue.id]
    return {"ready": c.ready, "delayed": c.delayed, "in_flight": c.in_flight, "dead": c.dead}


def assert_counts_exact(*queues: Queue) -> None:
    """Live counts equal real counts before folding, after folding, and the
    folded row alone holds them once no delta is pending."""
    for q in queues:
        assert live_counts(q) == real_counts(q), q.name
    broker.fold_stats()
    for q in queues:
        assert live_counts(q) == real_counts(q), q.name
        stats = QueueStats.objects.get(queue=q)
        folded = {
            "ready": stats.ready,
            "delayed": stats.delayed,
            "in_flight": stats.in_flight,
            "dead": stats.dead_state + stats.dead_out,
        }
        assert folded == real_counts(q), q.name


# ------------------------------------------------------------------ queues --


def test_put_queue_creates_then_updates(db):
    q, created = broker.put_queue("q", {"visibility_timeout": 7})
    assert created and q.visibility_timeout == 7 and q.max_deliveries == 5
    q, created = broker.put_queue("q", {"max_deliveries": 0})
    assert not created and q.visibility_timeout == 7 and q.max_deliveries == 0


def test_a_queue_cannot_be_its_own_dead_letter_queue(db):
    with pytest.raises(InvalidValue):
        broker.put_queue("q", {"dead_letter_queue": "q"})


def test_dead_letter_queue_must_exist(db):
    with pytest.raises(InvalidValue):
        broker.put_queue("q", {"dead_letter_queue": "nope"})
    assert not Queue.objects.filter(name="q").exists()


def test_get_queue_of_unknown_name_raises(db):
    with pytest.raises(QueueNotFound):
        broker.get_queue("nope")


def test_deleting_a_dead_letter_queue_in_use_is_refused(db):
    dlq = make_queue("dlq")
    make_queue("q", dead_letter_queue=dlq)
    with pytest.raises(QueueInUse):
        broker.delete_queue(dlq)
    assert Queue.objects.filter(name="dlq").exists()


def test_delete_queue_removes_its_messages(db):
    q = make_queue()
    send(q, 1, 2)
    broker.delete_queue(q)
    assert Message.objects.count() == 0
    assert not Queue.objects.filter(name="q").exists()


def test_deleting_a_dlq_releases_the_origin_dead_count(db):
    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq, max_deliveries=1)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt], now=T0)
    assert live_counts(q)["dead"] == 1
    broker.put_queue("q", {"dead_letter_queue": None})
    broker.delete_queue(broker.get_queue("dlq"))
    assert_counts_exact(q)
    assert live_counts(q)["dead"] == 0


# ------------------------------------------------------------------- order --


def test_priority_first_then_oldest_first(db):
    q = make_queue()
    send(q, "low-1", priority=0, now=T0)
    send(q, "high-1", priority=9, now=T0 + 1)
    send(q, "low-2", priority=0, now=T0 + 2)
    send(q, "mid", priority=5, now=T0 + 3)
    send(q, "high-2", priority=9, now=T0 + 4)
    got = receive(q, 10, now=T0 + 5)
    assert bodies(got) == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_receiving_one_at_a_time_follows_the_same_order(db):
    q = make_queue()
    send(q, "a", "b")
    send(q, "urgent", priority=3)
    order = [bodies(receive(q))[0] for _ in range(3)]
    assert order == ["urgent", "a", "b"]
    assert receive(q) == []


def test_batch_publish_returns_ids_in_input_order(db):
    q = make_queue()
    ids = send(q, *range(50))
    assert len(set(ids)) == 50
    got = receive(q, 50)
    assert [str(d.id) for d in got] == ids
    assert bodies(got) == list(range(50))


def test_publish_is_all_or_nothing_when_one_body_is_too_large(db):
    q = make_queue(max_message_bytes=10)
    with pytest.raises(MessageTooLarge):
        send(q, "ok", "x" * 50)
    assert Message.objects.count() == 0
    assert_counts_exact(q)


def test_max_message_bytes_is_inclusive(db):
    q = make_queue(max_message_bytes=10)
    send(q, "12345678")  # 10 bytes of JSON with the quotes
    with pytest.raises(MessageTooLarge):
        send(q, "123456789")


# ------------------------------------------------------------------ delays --


def test_delayed_message_is_invisible_until_due(db):
    q = make_queue()
    send(q, "later", delay=10, now=T0)
    send(q, "now", now=T0)
    assert live_counts(q) == {"ready": 1, "delayed": 1, "in_flight": 0, "dead": 0}
    assert bodies(receive(q, 10, now=T0 + 9.9)) == ["now"]
    assert bodies(receive(q, 10, now=T0 + 10)) == ["later"]
    assert_counts_exact(q)


def test_a_receive_gets_messages_that_came_due_in_the_same_call(db):
    # On PostgreSQL the promotion rides in the claim's statement, whose
    # snapshot still sees them delayed: the receive claims again for them.
    q = make_queue()
    send(q, "due-1", "due-2", delay=5, now=T0)
    send(q, "ready", now=T0)
    got = receive(q, 10, now=T0 + 5)
    assert sorted(bodies(got)) == ["due-1", "due-2", "ready"]
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 3, "dead": 0}
    assert_counts_exact(q)


def test_queue_default_delay_applies_unless_the_message_overrides_it(db):
    q = make_queue(delay=30)
    send(q, "default", now=T0)
    send(q, "immediate", delay=0, now=T0)
    assert bodies(receive(q, 10, now=T0 + 1)) == ["immediate"]
    assert bodies(receive(q, 10, now=T0 + 30)) == ["default"]


def test_monitor_tick_promotes_due_delayed_messages(db):
    q = make_queue()
    send(q, "x", delay=5, now=T0)
    monitor.tick(now=T0 + 4)
    assert live_counts(q)["delayed"] == 1
    monitor.tick(now=T0 + 5)
    assert live_counts(q) == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}
    assert_counts_exact(q)


# ------------------------------------------------------------------- dedup --


def test_dedup_id_within_window_returns_first_id_and_enqueues_nothing(db):
    q = make_queue()
    first = broker.publish(q, [broker.NewMessage(body=b'"a"', dedup_id="k")], now=T0)
    again = broker.publish(q, [broker.NewMessage(body=b'"b"', dedup_id="k")], now=T0 + 60)
    assert first[0].duplicate is False
    assert again[0].duplicate is True and again[0].id == first[0].id
    assert Message.objects.count() == 1
    assert_counts_exact(q)


def test_dedup_holds_after_the_first_message_was_acked(db):
    q = make_queue()
    (first,) = send(q, "a", dedup_id="k")
    broker.ack(q, [receive(q)[0].receipt])
    again = broker.publish(q, [broker.NewMessage(body=b'"a"', dedup_id="k")], now=T0 + 100)
    assert again[0].duplicate is True and again[0].id == first
    assert Message.objects.count() == 0
    assert receive(q, now=T0 + 100) == []


def test_dedup_id_is_forgotten_after_the_window(db, settings):
    settings.MQ_DEDUP_WINDOW_SECONDS = 300
    q = make_queue()
    (first,) = send(q, "a", dedup_id="k", now=T0)
    later = broker.publish(q, [broker.NewMessage(body=b'"a"', dedup_id="k")], now=T0 + 301)
    assert later[0].duplicate is False and later[0].id != first
    assert Message.objects.count() == 2


def test_prune_dedup_forgets_expired_keys_only(db):
    q = make_queue()
    send(q, "a", dedup_id="old", now=T0)
    send(q, "b", dedup_id="new", now=T0 + 200)
    broker.prune_dedup(now=T0 + 301)
    assert list(DedupKey.objects.values_list("dedup_id", flat=True)) == ["new"]


def test_dedup_within_one_batch(db):
    q = make_queue()
    results = broker.publish(
        q,
        [
            broker.NewMessage(body=b'"a"', dedup_id="k"),
            broker.NewMessage(body=b'"b"'),
            broker.NewMessage(body=b'"c"', dedup_id="k"),
        ],
        now=T0,
    )
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].id == results[0].id != results[1].id
    assert bodies(receive(q, 10)) == ["a", "b"]


def test_dedup_is_per_queue(db):
    a, b = make_queue("a"), make_queue("b")
    send(a, 1, dedup_id="k")
    res = broker.publish(b, [broker.NewMessage(body=b"1", dedup_id="k")], now=T0)
    assert res[0].duplicate is False
    assert Message.objects.count() == 2


# ------------------------------------------------------------ leases, fences --


def test_receive_leases_with_the_queue_visibility_timeout_by_default(db):
    q = make_queue(visibility_timeout=17)
    send(q, "x")
    (d,) = receive(q)
    assert d.lease_expires_at == T0 + 17 and d.delivery_count == 1
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 0}
    send(q, "y")
    (d2,) = receive(q, visibility_timeout=3)
    assert d2.lease_expires_at == T0 + 3


def test_expired_lease_is_redelivered_with_delivery_count_plus_one(db):
    q = make_queue(visibility_timeout=10)
    send(q, "x")
    (first,) = receive(q, now=T0)
    monitor.tick(now=T0 + 9)
    assert receive(q, now=T0 + 9) == []
    assert monitor.tick(now=T0 + 10)["expired"] == 1
    (again,) = receive(q, now=T0 + 10)
    assert again.id == first.id and again.delivery_count == 2
    assert again.receipt != first.receipt
    assert_counts_exact(q)
    totals = broker.queue_counts([q.id])[q.id].totals
    assert totals["redelivered_total"] == 1 and totals["received_total"] == 2


def test_ack_with_a_receipt_that_was_re_leased_is_stale_and_removes_nothing(db):
    q = make_queue(visibility_timeout=10)
    send(q, "x")
    (first,) = receive(q, now=T0)
    monitor.tick(now=T0 + 11)
    (second,) = receive(q, now=T0 + 11)
    result = broker.ack(q, [first.receipt])
    assert result.done == [] and result.stale == [first.receipt]
    assert Message.objects.get(pk=second.id).state == S.IN_FLIGHT
    assert broker.nack(q, [first.receipt], now=T0 + 12).stale == [first.receipt]
    assert broker.extend(q, [first.receipt], 100, now=T0 + 12)[0].stale == [first.receipt]
    assert Message.objects.get(pk=second.id).lease_expires_at == T0 + 21
    assert broker.ack(q, [second.receipt]).done == [str(second.id)]
    assert Message.objects.count() == 0
    assert_counts_exact(q)


def test_ack_of_an_already_acked_receipt_is_stale(db):
    q = make_queue()
    send(q, "x")
    (d,) = receive(q)
    assert broker.ack(q, [d.receipt]).done == [str(d.id)]
    again = broker.ack(q, [d.receipt])
    assert again.done == [] and again.stale == [d.receipt]
    assert broker.queue_counts([q.id])[q.id].totals["acked_total"] == 1


def test_the_same_receipt_twice_in_one_ack_acks_once(db):
    q = make_queue()
    send(q, "x")
    (d,) = receive(q)
    result = broker.ack(q, [d.receipt, d.receipt])
    assert result.done == [str(d.id)] and result.stale == [d.receipt]
    assert_counts_exact(q)


def test_receipt_of_a_purged_message_is_stale(db):
    q = make_queue()
    send(q, "x", "y")
    (d,) = receive(q)
    assert broker.purge(q) == 2
    assert broker.ack(q, [d.receipt]).stale == [d.receipt]
    assert broker.nack(q, [d.receipt]).stale == [d.receipt]
    assert_counts_exact(q)


def test_receipt_is_only_good_on_its_own_queue(db):
    a, b = make_queue("a"), make_queue("b")
    send(a, "x")
    (d,) = receive(a)
    assert broker.ack(b, [d.receipt]).stale == [d.receipt]
    assert Message.objects.filter(pk=d.id).exists()


def test_malformed_receipt_is_an_invalid_value(db):
    q = make_queue()
    with pytest.raises(InvalidValue):
        broker.ack(q, ["not-a-receipt"])


def test_ack_in_a_dlq_releases_the_origin_dead_count(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "a", "b", "c")
    for d in receive(q, 3):
        broker.nack(q, [d.receipt])
    assert live_counts(q)["dead"] == 3
    leased = receive(dlq, 3)
    result = broker.ack(dlq, [leased[0].receipt, leased[1].receipt, f"{leased[2].id}.{'0' * 32}"])
    assert result.done == [str(leased[0].id), str(leased[1].id)] and len(result.stale) == 1
    assert live_counts(q)["dead"] == 1 and live_counts(dlq)["in_flight"] == 1
    assert_counts_exact(q, dlq)
    assert broker.queue_counts([dlq.id])[dlq.id].totals["acked_total"] == 2


def test_a_receipt_pairs_its_id_with_its_own_token_only(db):
    # Two live receipts: one's id with the other's token names no message.
    q = make_queue()
    send(q, "a", "b")
    d1, d2 = receive(q, 2)
    crossed = [f"{d1.id}.{d2.lease_token}", f"{d2.id}.{d1.lease_token}"]
    assert broker.ack(q, crossed).stale == crossed
    assert broker.extend(q, crossed, 60)[0].stale == crossed
    assert broker.nack(q, crossed).stale == crossed
    assert Message.objects.filter(state=S.IN_FLIGHT).count() == 2
    assert broker.ack(q, [d2.receipt, d1.receipt]).done == [str(d2.id), str(d1.id)]
    assert_counts_exact(q)


def test_no_receipts_change_nothing(db):
    q = make_queue()
    send(q, "x")
    receive(q)
    assert broker.ack(q, []).done == [] and broker.nack(q, []).done == [] and broker.extend(q, [], 60)[0].done == []
    assert Message.objects.get().state == S.IN_FLIGHT


def test_mixed_ack_reports_acked_and_stale_separately(db):
    q = make_queue()
    send(q, "a", "b")
    d1, d2 = receive(q, 2)
    broker.ack(q, [d1.receipt])
    result = broker.ack(q, [d1.receipt, d2.receipt])
    assert result.done == [str(d2.id)] and result.stale == [d1.receipt]


def test_extend_pushes_the_lease_so_it_does_not_expire(db):
    q = make_queue(visibility_timeout=10)
    send(q, "x")
    (d,) = receive(q, now=T0)
    result, expires = broker.extend(q, [d.receipt], 30, now=T0 + 5)
    assert result.done == [str(d.id)] and expires == T0 + 35
    assert monitor.tick(now=T0 + 20)["expired"] == 0
    assert broker.ack(q, [d.receipt]).done == [str(d.id)]


def test_extended_lease_still_expires_at_its_new_time(db):
    q = make_queue(visibility_timeout=10)
    send(q, "x")
    (d,) = receive(q, now=T0)
    broker.extend(q, [d.receipt], 30, now=T0 + 5)
    assert monitor.tick(now=T0 + 35)["expired"] == 1
    assert broker.ack(q, [d.receipt]).stale == [d.receipt]


# ---------------------------------------------------------------- nack, DLQ --


def test_nack_returns_the_message_to_ready_as_a_failed_delivery(db):
    q = make_queue()
    send(q, "x")
    (d,) = receive(q)
    assert broker.nack(q, [d.receipt], reason="boom", now=T0).done == [str(d.id)]
    m = Message.objects.get(pk=d.id)
    assert m.state == S.READY and m.last_error == "boom"
    (again,) = receive(q)
    assert again.delivery_count == 2
    assert broker.ack(q, [d.receipt]).stale == [d.receipt]
    assert_counts_exact(q)


def test_nack_with_delay_holds_the_message_back(db):
    q = make_queue()
    send(q, "x")
    (d,) = receive(q, now=T0)
    broker.nack(q, [d.receipt], delay=30, now=T0 + 1)
    assert live_counts(q) == {"ready": 0, "delayed": 1, "in_flight": 0, "dead": 0}
    assert receive(q, now=T0 + 30) == []
    (again,) = receive(q, now=T0 + 31)
    assert again.id == d.id and again.delivery_count == 2
    assert_counts_exact(q)


def test_nack_past_max_deliveries_moves_to_dead_letter_queue(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=2, dead_letter_queue=dlq)
    send(q, "poison")
    (d,) = receive(q)
    broker.nack(q, [d.receipt])
    (d,) = receive(q)
    assert d.delivery_count == 2
    broker.nack(q, [d.receipt], reason="still broken")
    assert receive(q) == []
    m = Message.objects.get(pk=d.id)
    assert m.queue_id == dlq.id and m.state == S.READY and m.origin_queue_id == q.id
    assert live_counts(q)["dead"] == 1
    assert live_counts(dlq)["ready"] == 1
    (in_dlq,) = receive(dlq)
    assert bodies([in_dlq]) == ["poison"]
    assert_counts_exact(q, dlq)
    assert broker.queue_counts([q.id])[q.id].totals["dead_lettered_total"] == 1


def test_expiry_past_max_deliveries_without_dlq_marks_dead_in_place(db):
    q = make_queue(max_deliveries=2, visibility_timeout=5)
    send(q, "poison")
    receive(q, now=T0)
    monitor.tick(now=T0 + 5)
    (d,) = receive(q, now=T0 + 5)
    assert d.delivery_count == 2
    monitor.tick(now=T0 + 10)
    m = Message.objects.get(pk=d.id)
    assert m.state == S.DEAD and m.queue_id == q.id
    assert receive(q, now=T0 + 20) == []
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    assert_counts_exact(q)


def test_expiry_past_max_deliveries_moves_to_dead_letter_queue(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, visibility_timeout=5, dead_letter_queue=dlq)
    send(q, "x")
    receive(q, now=T0)
    monitor.tick(now=T0 + 6)
    assert Message.objects.get().queue_id == dlq.id
    assert_counts_exact(q, dlq)


def test_max_deliveries_zero_means_unlimited(db):
    q = make_queue(max_deliveries=0)
    send(q, "x")
    for n in range(1, 13):
        (d,) = receive(q)
        assert d.delivery_count == n
        broker.nack(q, [d.receipt])
    assert Message.objects.get().state == S.READY
    assert_counts_exact(q)


def test_nack_with_delay_past_max_deliveries_still_dead_letters(db):
    q = make_queue(max_deliveries=1)
    send(q, "x")
    (d,) = receive(q)
    broker.nack(q, [d.receipt], delay=60)
    assert Message.objects.get().state == S.DEAD
    assert_counts_exact(q)


# ------------------------------------------------------------ purge, redrive --


def test_purge_deletes_every_message_and_zeroes_counts(db):
    q = make_queue(max_deliveries=1)
    send(q, "ready", "leased", "dies")
    send(q, "later", delay=100)
    receive(q)
    (d,) = receive(q)
    broker.nack(q, [d.receipt])
    assert real_counts(q) == {"ready": 1, "delayed": 1, "in_flight": 1, "dead": 1}
    assert broker.purge(q) == 4
    assert Message.objects.count() == 0
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    assert_counts_exact(q)


def test_purging_a_dlq_clears_the_origin_dead_count(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    broker.purge(dlq)
    assert live_counts(q)["dead"] == 0
    assert_counts_exact(q, dlq)


def test_redrive_returns_dead_messages_in_place_to_ready(db):
    q = make_queue(max_deliveries=1)
    send(q, "a", "b", "c")
    for d in receive(q, 3):
        broker.nack(q, [d.receipt])
    assert live_counts(q)["dead"] == 3
    assert broker.redrive(q, max_messages=2, now=T0 + 1) == 2
    assert live_counts(q) == {"ready": 2, "delayed": 0, "in_flight": 0, "dead": 1}
    got = receive(q, 10, now=T0 + 1)
    assert bodies(got) == ["a", "b"] and all(d.delivery_count == 1 for d in got)
    assert broker.redrive(q) == 1
    assert_counts_exact(q)


def test_redrive_of_a_dlq_sends_messages_back_to_their_origin(db):
    dlq = make_queue("dlq")
    a = make_queue("a", max_deliveries=1, dead_letter_queue=dlq)
    b = make_queue("b", max_deliveries=1, dead_letter_queue=dlq)
    send(a, "from-a-1", "from-a-2")
    send(b, "from-b")
    for q in (a, b):
        for d in receive(q, 10):
            broker.nack(q, [d.receipt])
    assert live_counts(dlq)["ready"] == 3
    assert live_counts(a)["dead"] == 2 and live_counts(b)["dead"] == 1
    assert broker.redrive(dlq, max_messages=2) == 2
    assert_counts_exact(a, b, dlq)
    assert broker.redrive(dlq) == 1
    assert live_counts(dlq)["ready"] == 0
    assert sorted(bodies(receive(a, 10))) == ["from-a-1", "from-a-2"]
    assert bodies(receive(b, 10)) == ["from-b"]
    assert Message.objects.filter(origin_queue__isnull=False).count() == 0
    assert_counts_exact(a, b, dlq)


def test_redrive_leaves_leased_dlq_messages_alone(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x", "y")
    for d in receive(q, 2):
        broker.nack(q, [d.receipt])
    (held,) = receive(dlq)
    assert broker.redrive(dlq) == 1
    assert Message.objects.get(pk=held.id).queue_id == dlq.id
    assert broker.ack(dlq, [held.receipt]).done == [str(held.id)]
    assert_counts_exact(q, dlq)


def test_redrive_of_an_empty_queue_moves_nothing(db):
    q = make_queue()
    send(q, "ready")
    assert broker.redrive(q) == 0
    assert live_counts(q)["ready"] == 1


def test_a_redrive_moves_exactly_the_redrivable_messages(db):
    dlq = make_queue("dlq", max_deliveries=1)
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(dlq, "dead-in-place")
    broker.nack(dlq, [receive(dlq)[0].receipt])
    send(q, "held", "dies-again", "waits-1", "waits-2")
    for d in receive(q, 4):
        broker.nack(q, [d.receipt])
    receive(dlq)  # leased in the dead-letter queue: left to its holder
    broker.nack(dlq, [receive(dlq)[0].receipt])  # dead again, still from q
    send(dlq, "the-dlqs-own")
    assert [Message.objects.dead_of(x).count() for x in (q, dlq)] == [live_counts(q)["dead"], live_counts(dlq)["dead"]] == [4, 2]
    redrivable = set(Message.objects.redrivable(dlq).values_list("id", flat=True))
    before = {m.id: (m.queue_id, m.state) for m in Message.objects.all()}
    assert broker.redrive(dlq) == len(redrivable) == 4
    after = {m.id: (m.queue_id, m.state) for m in Message.objects.all()}
    assert {i for i in before if after[i] != before[i]} == redrivable
    assert_counts_exact(q, dlq)


# ------------------------------------------------------------------- browse --


def test_browse_by_state_with_pagination_does_not_lease(db):
    q = make_queue(max_deliveries=1)
    ids = send(q, *range(7))
    send(q, "later", delay=60)
    page1 = broker.browse(q, state="ready", limit=3)
    page2 = broker.browse(q, state="ready", limit=3, after=page1[-1].pk)
    page3 = broker.browse(q, state="ready", limit=3, after=page2[-1].pk)
    assert [str(m.pk) for m in page1 + page2 + page3] == ids
    assert len(page3) == 1
    assert [m.state for m in Message.objects.all()].count(S.IN_FLIGHT) == 0
    assert [m.body for m in broker.browse(q, state="delayed")] == ['"later"']
    receive(q, 2)
    assert len(broker.browse(q, state="in_flight")) == 2


def test_browse_dead_includes_messages_dead_lettered_out(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    (m,) = broker.browse(q, state="dead")
    assert m.to_dict()["origin_queue"] == "q" and m.to_dict()["queue"] == "dlq"


# -------------------------------------------------------------- FIFO groups --


def test_fifo_queue_has_one_message_per_group_in_flight(db):
    q = make_queue(fifo=True)
    send(q, "a1", "a2", "a3", group="a")
    send(q, "b1", "b2", group="b")
    send(q, "free1", "free2")
    got = receive(q, 10)
    assert sorted(bodies(got)) == ["a1", "b1", "free1", "free2"]
    assert receive(q, 10) == []
    by_body = {b: d for b, d in zip(bodies(got), got, strict=True)}
    broker.ack(q, [by_body["a1"].receipt])
    assert bodies(receive(q, 10)) == ["a2"]


def test_fifo_group_is_delivered_in_enqueue_order_whatever_the_priority(db):
    q = make_queue(fifo=True)
    send(q, "first", group="g", priority=0)
    send(q, "second", group="g", priority=9)
    order = []
    for _ in range(2):
        (d,) = receive(q, 10)
        order.append(bodies([d])[0])
        broker.ack(q, [d.receipt])
    assert order == ["first", "second"]


def test_fifo_nacked_message_comes_first_again(db):
    q = make_queue(fifo=True)
    send(q, "1", "2", "3", group="g")
    (d,) = receive(q, 10)
    broker.nack(q, [d.receipt])
    (again,) = receive(q, 10)
    assert again.id == d.id and bodies([again]) == ["1"]


def test_fifo_delayed_nack_blocks_its_group_until_due(db):
    q = make_queue(fifo=True)
    send(q, "1", "2", group="g")
    (d,) = receive(q, now=T0)
    broker.nack(q, [d.receipt], delay=10, now=T0)
    assert receive(q, 10, now=T0 + 5) == []
    (again,) = receive(q, 10, now=T0 + 10)
    assert again.id == d.id


def test_fifo_expired_lease_keeps_group_order(db):
    q = make_queue(fifo=True, visibility_timeout=5)
    send(q, "1", "2", group="g")
    (d,) = receive(q, now=T0)
    monitor.tick(now=T0 + 5)
    (again,) = receive(q, 10, now=T0 + 5)
    assert again.id == d.id and again.delivery_count == 2


def test_non_fifo_queue_ignores_groups(db):
    q = make_queue()
    send(q, "1", "2", group="g")
    assert len(receive(q, 10)) == 2


# ------------------------------------------------------- paused, consumers --


def test_paused_queue_delivers_nothing_until_resumed(db):
    q = make_queue(paused=True)
    send(q, "x")
    assert receive(q, 10) == []
    assert live_counts(q)["ready"] == 1
    broker.put_queue("q", {"paused": False})
    q = broker.get_queue("q")
    assert bodies(receive(q)) == ["x"]


def test_receive_records_the_consumer_and_release_returns_its_leases(db):
    q = make_queue()
    c = broker.register_consumer("w1", ["q"], {}, None)
    send(q, "a", "b")
    got = receive(q, 2, consumer_id=c.pk)
    assert all(m.consumer_id == c.pk for m in Message.objects.all())
    assert broker.consumer_in_flight([c.pk]) == {c.pk: 2}
    assert broker.leave(c.pk) == 2
    assert Consumer.objects.get(pk=c.pk).status == "dead"
    assert broker.ack(q, [got[0].receipt]).stale == [got[0].receipt]
    assert [d.delivery_count for d in receive(q, 2)] == [2, 2]
    assert_counts_exact(q)


# ------------------------------------------------------------------- counts --


def test_oldest_ready_age_is_the_age_of_the_oldest_ready_message(db):
    q = make_queue()
    assert broker.queue_counts([q.id], now=T0)[q.id].oldest_ready_age is None
    send(q, "a", now=T0)
    send(q, "b", now=T0 + 5)
    assert broker.queue_counts([q.id], now=T0 + 12)[q.id].oldest_ready_age == 12
    receive(q, now=T0 + 12)
    assert broker.queue_counts([q.id], now=T0 + 12)[q.id].oldest_ready_age == 7


def test_counts_stay_exact_through_a_mixed_history(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=2, visibility_timeout=10, dead_letter_queue=dlq)
    other = make_queue("other", max_deliveries=1)
    send(q, *range(20), now=T0)
    send(q, *range(5), delay=50, now=T0)
    send(other, *range(4), now=T0)
    assert_counts_exact(q, dlq, other)
    got = receive(q, 8, now=T0)
    broker.ack(q, [d.receipt for d in got[:3]])
    broker.nack(q, [d.receipt for d in got[3:5]], now=T0)
    broker.nack(q, [got[5].receipt], delay=5, now=T0)
    assert_counts_exact(q, dlq, other)
    monitor.tick(now=T0 + 11)  # got[6:8] expire
    got = receive(q, 20, now=T0 + 11)
    broker.nack(q, [d.receipt for d in got if d.delivery_count == 2], now=T0 + 11)
    assert_counts_exact(q, dlq, other)
    for d in receive(other, 4, now=T0 + 11):
        broker.nack(other, [d.receipt], now=T0 + 11)
    monitor.tick(now=T0 + 60)
    assert_counts_exact(q, dlq, other)
    broker.redrive(dlq, max_messages=1)
    broker.redrive(other, max_messages=2)
    assert_counts_exact(q, dlq, other)
    broker.purge(q)
    assert_counts_exact(q, dlq, other)
    assert broker.recount(q).ready == 0


def test_recount_repairs_counters_that_drifted(db):
    q = make_queue()
    send(q, 1, 2, 3)
    broker.fold_stats()
    QueueStats.objects.filter(queue=q).update(ready=999)
    c = broker.recount(q)
    assert c.ready == 3
    assert_counts_exact(q)


def test_message_dying_again_in_its_dlq_counts_once_and_redrives_home(db):
    dlq = make_queue("dlq", max_deliveries=1)
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    broker.nack(dlq, [receive(dlq)[0].receipt])
    m = Message.objects.get()
    assert (m.queue_id, m.state, m.origin_queue_id) == (dlq.id, S.DEAD, q.id)
    assert live_counts(q)["dead"] == 1 and live_counts(dlq)["dead"] == 1
    assert_counts_exact(q, dlq)
    assert broker.redrive(dlq) == 1
    m.refresh_from_db()
    assert (m.queue_id, m.state, m.origin_queue_id) == (q.id, S.READY, None)
    assert_counts_exact(q, dlq)


def test_chain_of_dead_letter_queues_keeps_the_first_origin(db):
    d2 = make_queue("d2")
    d1 = make_queue("d1", max_deliveries=1, dead_letter_queue=d2)
    q = make_queue("q", max_deliveries=1, dead_letter_queue=d1)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    broker.nack(d1, [receive(d1)[0].receipt])
    m = Message.objects.get()
    assert (m.queue_id, m.origin_queue_id) == (d2.id, q.id)
    assert live_counts(q)["dead"] == 1 and live_counts(d1)["dead"] == 0
    assert_counts_exact(q, d1, d2)
    assert broker.redrive(d2) == 1
    assert Message.objects.get().queue_id == q.id
    assert_counts_exact(q, d1, d2)


def test_batch_of_a_thousand_with_dedup_ids(db):
    q = make_queue()
    batch = [broker.NewMessage(body=b"1", dedup_id=f"k{i}") for i in range(1000)]
    first = broker.publish(q, batch, now=T0)
    assert [r.duplicate for r in first] == [False] * 1000
    again = broker.publish(q, batch, now=T0 + 1)
    assert [r.duplicate for r in again] == [True] * 1000
    assert [r.id for r in again] == [r.id for r in first]
    assert Message.objects.count() == 1000
    got = receive(q, 100)
    assert broker.ack(q, [d.receipt for d in got]).stale == []
    assert_counts_exact(q)


def test_receive_from_a_dead_consumer_is_refused_at_the_edge_but_leave_releases(db):
    q = make_queue()
    c = broker.register_consumer("w", ["q"], {}, None)
    send(q, "x")
    receive(q, consumer_id=c.pk)
    broker.leave(c.pk)
    from queues.exceptions import ConsumerDead

    with pytest.raises(ConsumerDead):
        broker.heartbeat(c.pk)
    assert live_counts(q)["ready"] == 1


def test_a_batch_costs_a_handful_of_statements_not_one_per_message(db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    q = make_queue()
    with CaptureQueriesContext(connection) as sent:
        send(q, *range(1000))
    with CaptureQueriesContext(connection) as received:
        got = receive(q, 100)
    with CaptureQueriesContext(connection) as acked:
        broker.ack(q, [d.receipt for d in got])
    assert len(got) == 100
    # Counted statements include savepoints/transaction control: a handful.
    assert len(sent) <= 12, [x["sql"][:80] for x in sent.captured_queries]
    assert len(received) <= 8, [x["sql"][:80] for x in received.captured_queries]
    assert len(acked) <= 8, [x["sql"][:80] for x in acked.captured_queries]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement forms are PostgreSQL's")
def test_on_postgresql_send_receive_and_ack_are_one_statement_each(db):
    from django.test.utils import CaptureQueriesContext

    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq)
    with CaptureQueriesContext(connection) as sent:
        send(q, *range(100))
    with CaptureQueriesContext(connection) as received:
        got = receive(q, 100)
    with CaptureQueriesContext(connection) as acked:
        result = broker.ack(q, [d.receipt for d in got])
    assert len(result.done) == 100
    assert [len(sent), len(received), len(acked)] == [1, 1, 1]
    assert_counts_exact(q, dlq)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement forms are PostgreSQL's")
def test_on_postgresql_acks_riding_on_a_receive_are_in_its_statement(db):
    from django.test.utils import CaptureQueriesContext

    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq)
    send(q, *range(200))
    first = receive(q, 100)
    with CaptureQueriesContext(connection) as both:
        second, acked = broker.ack_and_receive(q, [d.receipt for d in first], max_messages=100, now=T0)
    assert len(both) == 1, [x["sql"][:80] for x in both.captured_queries]
    assert acked.done == [str(d.id) for d in first] and acked.stale == []
    assert bodies(second) == list(range(100, 200))
    assert not Message.objects.filter(id__in=[d.id for d in first]).exists()
    assert broker.queue_counts([q.id])[q.id].totals["acked_total"] == 100
    assert_counts_exact(q, dlq)


def test_acks_riding_on_a_receive_come_first_and_report_stale_receipts(db):
    q = make_queue("q", visibility_timeout=30)
    send(q, "a", "b", "c")
    a, b = receive(q, 2)
    broker.ack(q, [a.receipt])
    # a: acked before (stale); b: good; a made-up token: stale.
    bogus = f"{b.id}.{'0' * 32}"
    got, acked = broker.ack_and_receive(q, [a.receipt, b.receipt, bogus], max_messages=10, now=T0)
    assert acked.done == [str(b.id)] and acked.stale == [a.receipt, bogus]
    assert bodies(got) == ["c"]
    assert_counts_exact(q)


def test_an_ack_riding_on_a_receive_wins_over_its_claim(db):
    # A receipt may act on a message that is ready again and still carries
    # its token (ACKABLE). No path leaves one so today (a lease that expires
    # or is given back loses its token), so it is made by hand: the ack
    # deletes it, and the same call's claim must not hand it out again.
    q = make_queue("q", visibility_timeout=30)
    send(q, "acked", "delayed", "other")
    acked_one, delayed, _other = receive(q, 3)
    Message.objects.filter(id=acked_one.id).update(state=S.READY)
    broker.nack(q, [delayed.receipt], delay=1, now=T0)
    assert broker.expire_leases(now=T0 + 31) == 1
    broker.recount(q)
    # The nacked message came due meanwhile: promoted and claimed too.
    got, acked = broker.ack_and_receive(q, [acked_one.receipt], max_messages=10, now=T0 + 32)
    assert acked.done == [str(acked_one.id)]
    assert sorted(bodies(got)) == ["delayed", "other"]
    assert not Message.objects.filter(id=acked_one.id).exists()
    assert_counts_exact(q)


def test_acks_riding_on_a_receive_of_a_paused_or_fifo_queue_still_land(db):
    paused = make_queue("paused")
    send(paused, "p")
    (p,) = receive(paused)
    broker.put_queue("paused", {"paused": True})
    paused = broker.get_queue("paused")
    got, acked = broker.ack_and_receive(paused, [p.receipt], max_messages=5, now=T0)
    assert got == [] and acked.done == [str(p.id)]
    fifo = make_queue("fifo", fifo=True)
    send(fifo, "g1", "g2", group="g")
    (g1,) = receive(fifo, 5)
    # The ack comes first: the group's next message is free for the claim.
    got, acked = broker.ack_and_receive(fifo, [g1.receipt], max_messages=5, now=T0)
    assert acked.done == [str(g1.id)] and bodies(got) == ["g2"]
    assert_counts_exact(paused, fifo)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_on_postgresql_the_hot_statements_are_prepared_on_a_kept_connection(db):
    # Planned once per connection, not at every call: after a few runs the
    # send's insert, the claim and the ack are prepared statements.
    q = make_queue()
    for i in range(6):
        send(q, i, i + 100)
        got = receive(q, 2)
        assert len(broker.ack(q, [d.receipt for d in got]).done) == 2
    with connection.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cur.fetchall()]
    assert any(s.startswith("WITH ins AS (INSERT INTO queues_message") for s in prepared), prepared
    assert any("mq_ready_head(" in s for s in prepared), prepared
    assert any(s.startswith("WITH main AS (DELETE FROM queues_message") for s in prepared), prepared
    assert_counts_exact(q)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_on_postgresql_the_hot_statements_keep_one_plan_beside_a_big_queue(db):
    # One queue holds nearly every row. PostgreSQL had found the generic
    # plan of the claim + ack dearer than one made for the small queue's id
    # and planned it at every call (0.5 ms each): the ack probed the queue's
    # index, cheap for a small queue, costed for an average one.
    big, small = make_queue("big"), make_queue("small")
    for start in range(0, 30_000, 1_000):
        send(big, *range(start, start + 1_000))
    with connection.cursor() as cur:
        cur.execute("ANALYZE queues_message")
    send(small, *range(30))
    held: list[broker.Delivery] = []
    for i in range(22):
        held, acked = broker.ack_and_receive(small, [d.receipt for d in held], max_messages=1, now=T0)
        assert len(held) == 1 and len(acked.done) == min(i, 1)
    with connection.cursor() as cur:
        cur.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH acked AS%%mq_ready_head(%%'")
        ((generic, custom),) = cur.fetchall()
        # Prepared after a few runs; PostgreSQL tries five plans of its own,
        # then keeps the generic one.
        assert custom == 5 and generic >= 10, (generic, custom)
        # The function's query keeps one plan too, and never compiles it:
        # costed for the big queue, compiling took 5-6 ms a claim.
        cur.execute("SELECT proconfig FROM pg_proc WHERE proname = 'mq_ready_head'")
        config = cur.fetchone()[0]
        assert "plan_cache_mode=force_generic_plan" in config and "jit=off" in config
    assert_counts_exact(big, small)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the claim function is PostgreSQL's")
def test_on_postgresql_the_claim_walks_the_claim_index_even_on_stale_statistics(db):
    # Statistics taken while the queue was empty: planned as a plain
    # subquery, the claim would sort all 3,000 ready rows for each receive.
    q = make_queue()
    with connection.cursor() as cur:
        cur.execute("ANALYZE queues_message")
    send(q, *range(3000))
    claim, _ = broker.claim_statement(q, max_messages=10, expires=T0 + 30)
    assert "mq_ready_head(" in claim
    with connection.cursor() as cur:
        cur.execute("SELECT proconfig FROM pg_proc WHERE proname = 'mq_ready_head'")
        (config,) = cur.fetchone()
        assert "enable_sort=off" in config
        # The function's own query, under the function's setting.
        cur.execute("SET LOCAL enable_sort = off")
        cur.execute(
            "EXPLAIN SELECT m.id FROM queues_message m WHERE m.queue_id = %s AND m.state = 'ready' "
            "ORDER BY m.priority DESC, m.id LIMIT 10 FOR UPDATE SKIP LOCKED",
            [q.id],
        )
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert "mq_msg_claim" in plan and "Sort" not in plan, plan
    got = receive(q, 10)
    assert [d.id for d in got] == sorted(d.id for d in got) and len(got) == 10


def test_a_batch_keeps_its_order_ids_and_fields(db):
    q = make_queue()
    results = broker.publish(
        q,
        [
            broker.NewMessage(body=b'"a"', priority=3, headers={"k": "v"}),
            broker.NewMessage(body=b'"b"', delay=60, group="g"),
            broker.NewMessage(body=b'"c"', dedup_id="d1"),
        ],
    )
    ids = [int(r.id) for r in results]
    assert ids == sorted(ids)
    rows = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
    a, b, c = (rows[i] for i in ids)
    assert (a.body, a.priority, a.headers, a.state) == ('"a"', 3, '{"k":"v"}', S.READY)
    assert (b.body, b.group_key, b.state) == ('"b"', "g", S.DELAYED)
    assert b.visible_at == pytest.approx(b.enqueued_at + 60)
    assert (c.body, c.dedup_id, c.delivery_count, c.lease_token, c.consumer_id) == ('"c"', "d1", 0, None, None)


def test_churning_tables_are_vacuumed_early_on_postgresql(db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no autovacuum to tune")
    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN "
            "('queues_message', 'queues_queuestatsdelta', 'queues_dedupkey')"
        )
        options = {name: set(opts or []) for name, opts in cur.fetchall()}
    assert "autovacuum_vacuum_scale_factor=0" in options["queues_message"]
    assert "autovacuum_vacuum_threshold=5000" in options["queues_message"]
    assert "autovacuum_vacuum_threshold=2000" in options["queues_queuestatsdelta"]
    assert "autovacuum_vacuum_threshold=5000" in options["queues_dedupkey"]


def test_autovacuum_off_is_reported_by_the_database_check(db):
    from django.db import connection

    from queues.checks import check_autovacuum

    if connection.vendor != "postgresql":
        assert check_autovacuum(databases=["default"]) == []
        return
    with connection.cursor() as cur:
        cur.execute("SELECT current_setting('autovacuum')")
        (setting,) = cur.fetchone()
    warnings = check_autovacuum(databases=["default"])
    assert [w.id for w in warnings] == ([] if setting == "on" else ["mq.W005"])


def test_a_receive_for_a_consumer_that_left_meanwhile_claims_nothing(db):
    # The API refuses a dead consumer when the receive starts; a long poll
    # that was already waiting when its consumer left must not claim either,
    # or the message would sit leased to nobody until its timeout.
    q = make_queue()
    c = broker.register_consumer("w", ["q"], {}, None)
    send(q, "x")
    broker.leave(c.pk)
    assert broker.receive(q, max_messages=10, consumer_id=c.pk) == []
    assert live_counts(q)["ready"] == 1
    other = broker.register_consumer("v", ["q"], {}, None)
    assert len(broker.receive(q, max_messages=10, consumer_id=other.pk)) == 1


def _dead_rows(table: str) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [table])
        return int(cur.fetchone()[0])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="VACUUM is PostgreSQL's")
def test_with_autovacuum_off_the_monitor_vacuums_what_autovacuum_would_have(transactional_db, settings, monkeypatch):
    from .workers import wait_for

    monkeypatch.setattr(broker, "_vacuum_rests_until", {})

    table = Message._meta.db_table
    q = make_queue()
    # Past the table's own threshold (5,000 dead rows, migration 0005).
    for _ in range(6):
        send(q, *range(1000))
    broker.purge(q)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")  # the deletes' counts, to the stats views now
        cur.execute("SELECT current_setting('autovacuum')")
        autovacuum_on = cur.fetchone()[0] == "on"
    wait_for(lambda: _dead_rows(table) >= 6000 or (autovacuum_on and _dead_rows(table) == 0), timeout=10, interval=0.1)
    if autovacuum_on:
        assert table not in broker.vacuum_unvacuumed()  # autovacuum's job, not ours
    with connection.cursor() as cur:
        cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        if _dead_rows(table) == 0:  # autovacuum got there first: make more
            send(q, *range(6000))
            broker.purge(q)
            with connection.cursor() as cur:
                cur.execute("SELECT pg_stat_force_next_flush()")
            wait_for(lambda: _dead_rows(table) >= 6000, timeout=10, interval=0.1)
        settings.MQ_VACUUM = False  # the operator vacuums on a schedule of their own
        assert broker.vacuum_unvacuumed() == []
        settings.MQ_VACUUM = True
        ran = threading.Event()
        vacuum = monitor.Background("test-vacuum", lambda: ran.set() if broker.vacuum_unvacuumed() else None)
        vacuum.poke()
        assert ran.wait(10)
        wait_for(lambda: _dead_rows(table) == 0, timeout=10, interval=0.1)
        assert table not in broker.vacuum_unvacuumed()  # nothing left to do
    finally:
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="VACUUM is PostgreSQL's")
def test_dead_rows_an_open_transaction_holds_are_not_vacuumed_again_and_again(transactional_db, monkeypatch):
    # VACUUM cannot reclaim rows a running transaction may still see; the
    # table stays past its threshold, and each check would scan it again.
    import psycopg

    from queues.notify import conninfo

    from .workers import wait_for

    table = Message._meta.db_table
    monkeypatch.setattr(broker, "_vacuum_rests_until", {})
    monkeypatch.setattr(broker, "VACUUM_REST_FACTOR", 1e6)  # rests for good after one vacuum
    q = make_queue()
    with connection.cursor() as cur:
        cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    holder = psycopg.connect(conninfo())
    try:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute(f"SELECT count(*) FROM {table}")  # its snapshot pins every row deleted from now on
        send(q, *range(6000))
        broker.purge(q)
        with connection.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush()")
        wait_for(lambda: _dead_rows(table) >= 6000, timeout=10, interval=0.1)
        assert table in broker.vacuum_unvacuumed()
        assert _dead_rows(table) >= 6000  # nothing could be reclaimed
        assert table not in broker.vacuum_unvacuumed()  # resting, not scanning it again
        holder.rollback()  # the transaction ends; its rest over, the next check reclaims them
        broker._vacuum_rests_until.clear()
        assert table in broker.vacuum_unvacuumed()
        wait_for(lambda: _dead_rows(table) == 0, timeout=10, interval=0.1)
    finally:
        holder.close()
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def test_a_background_job_runs_once_at_a_time_and_outlives_its_failures(db):
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        started.set()
        release.wait(5)
        if len(runs) == 1:
            raise RuntimeError("the first run fails")

    background = monitor.Background("test-job", job)
    background.poke()
    assert started.wait(5)
    background.poke()  # while it runs: dropped
    release.set()
    from .workers import wait_for

    wait_for(lambda: not background._running.locked(), timeout=5, interval=0.01)
    assert runs == [1]
    background.poke()  # the failure did not wedge it
    wait_for(lambda: len(runs) == 2 and not background._running.locked(), timeout=5, interval=0.01)
