"""Receiving, called directly with a controlled clock: delivery order,
delayed messages coming due, leases, FIFO groups, paused queues and the
consumer a claim is recorded for."""

from __future__ import annotations

import pytest

from queues import broker, monitor
from queues.models import Consumer, Message

from .helpers import T0, assert_counts_exact, bodies, live_counts, make_queue, receive, send

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


# ------------------------------------------------------------------ leases --


def test_receive_leases_with_the_queue_visibility_timeout_by_default(db):
    q = make_queue(visibility_timeout=17)
    send(q, "x")
    (d,) = receive(q)
    assert d.lease_expires_at == T0 + 17 and d.delivery_count == 1
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 0}
    send(q, "y")
    (d2,) = receive(q, visibility_timeout=3)
    assert d2.lease_expires_at == T0 + 3


# ------------------------------------------------------------- FIFO groups --


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
    assert Consumer.objects.get(pk=c.pk).status == "left"
    assert broker.ack(q, [got[0].receipt]).stale == [got[0].receipt]
    assert [d.delivery_count for d in receive(q, 2)] == [2, 2]
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
