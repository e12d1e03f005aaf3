"""Live counts always equal the real counts, through any history; a
recount repairs counters that drifted."""

from __future__ import annotations

from queues import broker, monitor
from queues.models import QueueStats

from .helpers import T0, assert_counts_exact, make_queue, receive, send


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
