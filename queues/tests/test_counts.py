"""Live counts always equal the real counts, through any history; a
recount repairs counters that drifted."""

from __future__ import annotations

import pytest
from django.db import connection

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


def test_oldest_ready_age_looks_past_the_priorities(db):
    q = make_queue()
    send(q, "low", priority=0, now=T0)
    send(q, "high", priority=9, now=T0 + 3)
    send(q, "mid", priority=4, now=T0 + 5)
    assert broker.queue_counts([q.id], now=T0 + 12)[q.id].oldest_ready_age == 12
    receive(q, 2, now=T0 + 12)  # high and mid
    assert broker.queue_counts([q.id], now=T0 + 12)[q.id].oldest_ready_age == 12
    receive(q, now=T0 + 12)
    assert broker.queue_counts([q.id], now=T0 + 12)[q.id].oldest_ready_age is None


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


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks are PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_counter_deltas_do_not_lock_the_queue_row():
    # Every claim and ack appends a counter delta. Had the delta a foreign
    # key to its queue, each would lock the queue's row to check it, so all
    # of a queue's consumers would write one row's lock, and a receive would
    # wait behind whoever holds that row (here, FOR UPDATE).
    import psycopg

    from queues.notify import conninfo

    q = make_queue()
    send(q, "a", "b")
    holder = psycopg.connect(conninfo())
    try:
        holder.execute("SELECT 1 FROM queues_queue WHERE id = %s FOR UPDATE", [q.id])
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '2s'")
        got = receive(q, 2)
        assert len(got) == 2
        broker.ack(q, [d.receipt for d in got])
    finally:
        holder.close()
        with connection.cursor() as cur:
            cur.execute("RESET lock_timeout")
    assert_counts_exact(q)
