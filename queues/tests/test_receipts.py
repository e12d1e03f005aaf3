"""Receipts: ack, nack and extend act only with the lease token of the
current delivery; nacks past max deliveries dead-letter; acks riding on a
receive land before its claim."""

from __future__ import annotations

import pytest

from queues import broker, monitor
from queues.exceptions import InvalidValue
from queues.models import Message
from queues.states import MessageState as S

from .helpers import T0, assert_counts_exact, bodies, live_counts, make_queue, receive, send

# ------------------------------------------------------------------ fences --


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


# ------------------------------------------------------------------ extend --


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


# --------------------------------------------------------------- nack, DLQ --


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


# ------------------------------------------------ acks riding on a receive --


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
