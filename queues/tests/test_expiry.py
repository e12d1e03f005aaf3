"""Leases that ran out come back through a receive of their queue, without
the monitor: as redeliveries counted once and announced once, or
dead-lettered once they used up their deliveries, their old receipts fenced;
a long poll waiting on the queue is woken for them; and a receive and the
sweep racing over the same leases release each one once.

No test here runs the monitor (it runs in ``mq serve`` alone): every lease
that comes back here was released by a receive."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest
from django.db import connection

from queues import broker, events, notify
from queues.backends import dialect
from queues.broker import claim, waiting
from queues.models import Message, Queue
from queues.states import MessageState as S

from .helpers import T0, assert_counts_exact, bodies, live_counts, make_queue, receive, send
from .test_concurrency import DEADLINE_SECONDS, fill, run_threads


def totals(queue: Queue) -> dict[str, int]:
    return broker.queue_counts([queue.id])[queue.id].totals


def announced(kind: str) -> list[dict]:
    return [e for e in events.drain() if e["kind"] == kind]


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """``with committed():`` runs what its transactions do at commit (record
    their events, wake receives) as the block ends: a test's own transaction
    never commits."""
    events.drain()
    return functools.partial(django_capture_on_commit_callbacks, execute=True)


def test_a_lapsed_lease_is_redelivered_by_the_next_receive(db, committed):
    q = make_queue(visibility_timeout=10)
    send(q, "x")
    (first,) = receive(q, now=T0)
    with committed():
        assert receive(q, now=T0 + 9.9) == []  # still leased
    assert totals(q)["redelivered_total"] == 0 and announced("redelivery") == []
    with committed():
        (again,) = receive(q, now=T0 + 10)
    assert again.id == first.id and again.delivery_count == 2
    assert again.lease_expires_at == T0 + 20
    t = totals(q)
    assert t["redelivered_total"] == 1 and t["received_total"] == 2
    (event,) = announced("redelivery")
    assert event["message"] == str(first.id) and event["queue"] == "q" and event["delivery_count"] == 1
    # The old holder's receipt was fenced by the new lease.
    result = broker.ack(q, [first.receipt])
    assert result.done == [] and result.stale == [first.receipt]
    assert broker.ack(q, [again.receipt]).done == [str(first.id)]
    assert_counts_exact(q)


def test_a_lapsed_lease_is_taken_back_while_acks_ride_on_the_receive(db, committed):
    q = make_queue(visibility_timeout=10)
    send(q, "lapsed", "held")
    lapsed, held = receive(q, 2, now=T0)
    broker.extend(q, [held.receipt], 60, now=T0)
    with committed():
        got, acked = broker.ack_and_receive(q, [held.receipt], max_messages=5, now=T0 + 10)
    assert acked.done == [str(held.id)]
    assert [(d.id, d.delivery_count) for d in got] == [(lapsed.id, 2)]
    assert totals(q)["redelivered_total"] == 1 and len(announced("redelivery")) == 1
    assert_counts_exact(q)


def test_a_late_ack_riding_on_a_receive_wins_over_the_release(db, committed):
    # The holder acks after its lease ran out, before anyone took it back:
    # the ack lands (as SQS), and nothing is released or redelivered.
    q = make_queue(visibility_timeout=10)
    send(q, "slow")
    (d,) = receive(q, now=T0)
    with committed():
        got, acked = broker.ack_and_receive(q, [d.receipt], max_messages=5, now=T0 + 11)
    assert got == [] and acked.done == [str(d.id)]
    assert totals(q)["redelivered_total"] == 0 and announced("redelivery") == []
    assert not Message.objects.filter(id=d.id).exists()
    assert_counts_exact(q)


@pytest.mark.parametrize("with_dlq", [True, False], ids=["into_dead_letter_queue", "dead_in_place"])
def test_a_lapsed_lease_at_max_deliveries_is_dead_lettered_by_the_receive(db, committed, with_dlq):
    config = {"dead_letter_queue": make_queue("dlq")} if with_dlq else {}
    q = make_queue("q", visibility_timeout=5, max_deliveries=2, **config)
    send(q, "poison")
    (first,) = receive(q, now=T0)
    with committed():
        (second,) = receive(q, now=T0 + 5)
        assert second.delivery_count == 2
        assert receive(q, 10, now=T0 + 10) == []  # dead-lettered, not delivered
    m = Message.objects.get(pk=first.id)
    assert (m.state, m.queue.name) == ((S.READY, "dlq") if with_dlq else (S.DEAD, "q"))
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    t = totals(q)
    assert t["redelivered_total"] == 1 and t["dead_lettered_total"] == 1
    (event,) = announced("dead_letter")
    assert event["message"] == str(first.id) and event["dead_letter_queue"] == ("dlq" if with_dlq else None)
    assert broker.ack(q, [second.receipt]).stale == [second.receipt]
    assert_counts_exact(q, *([broker.get_queue("dlq")] if with_dlq else []))


def test_a_receive_takes_back_every_lapsed_lease_and_the_oldest_come_first(db, committed):
    # More lapsed than asked for: the others are ready for the next
    # receives, and delivered before the newer ready ones.
    q = make_queue(visibility_timeout=5)
    send(q, "a", "b", "c", now=T0)
    receive(q, 3, now=T0)
    send(q, "new", now=T0 + 1)
    with committed():
        first = bodies(receive(q, 1, now=T0 + 5))
    # On PostgreSQL the receive claimed from a snapshot where only "new"
    # was ready; on SQLite the release came before the claim.
    assert first == (["new"] if connection.vendor == "postgresql" else ["a"])
    assert live_counts(q) == {"ready": 3, "delayed": 0, "in_flight": 1, "dead": 0}
    assert totals(q)["redelivered_total"] == 3 and len(announced("redelivery")) == 3
    assert bodies(receive(q, 10, now=T0 + 6)) == [b for b in ("a", "b", "c", "new") if b not in first]
    assert_counts_exact(q)


def test_a_full_receive_still_takes_back_the_lapsed_leases(db):
    # A backlog keeps every receive full: the lapsed message must not wait
    # behind it for the monitor. (On PostgreSQL the receive that finds it
    # has claimed from a snapshot where it was not ready: the next one
    # delivers it. On SQLite it is released before the claim.)
    q = make_queue(visibility_timeout=5)
    send(q, "lapsed", now=T0)
    receive(q, now=T0)
    send(q, *range(10), now=T0 + 1)
    got = receive(q, 2, now=T0 + 5)
    assert totals(q)["redelivered_total"] == 1
    got += receive(q, 2, now=T0 + 6)
    assert "lapsed" in bodies(got)
    assert_counts_exact(q)


def test_a_fifo_group_whose_head_lapsed_goes_on_in_order(db):
    q = make_queue(fifo=True, visibility_timeout=5)
    send(q, "1", "2", group="g")
    (d,) = receive(q, 10, now=T0)
    (again,) = receive(q, 10, now=T0 + 5)
    assert again.id == d.id and again.delivery_count == 2
    assert_counts_exact(q)


def test_a_paused_queue_leaves_its_lapsed_leases_to_the_monitor(db):
    q = make_queue(visibility_timeout=5)
    send(q, "x")
    receive(q, now=T0)
    q = broker.pause(q)
    assert receive(q, now=T0 + 5) == []
    assert live_counts(q)["in_flight"] == 1
    assert broker.expire_leases(now=T0 + 5) == 1
    assert_counts_exact(q)


def test_a_lapsed_lease_counts_as_claimable_for_the_watch(db):
    q = make_queue(visibility_timeout=5)
    send(q, "a", "b")
    receive(q, 2, now=T0)

    def claimable(now: float) -> int:
        with connection.cursor() as cur:
            cur.execute(*dialect().claimable([q.id], now, 5))
            return dict(cur.fetchall())[q.id]

    assert claimable(T0 + 4) == 0
    assert claimable(T0 + 5) == 2


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_gets_a_lapsed_lease_without_the_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "RECHECK_SECONDS", 0.3)
    q = make_queue("slow", visibility_timeout=1)
    send(q, "x", now=time.time())
    (first,) = broker.receive(q)

    async def poll() -> list[broker.Delivery]:
        look = waiting.thread_looks(None, max_messages=1, visibility_timeout=30, consumer_id=None)
        return (await broker.long_poll(q, look, offer=notify.Offer(1, 30), wait=5.0)).deliveries

    started = time.monotonic()
    (again,) = asyncio.run(poll())
    waited = time.monotonic() - started
    assert again.id == first.id and again.delivery_count == 2
    # The lease ran out a second after it was taken; the watch looks every 0.3 s.
    assert 0.5 < waited < 2.5, waited
    assert totals(q)["redelivered_total"] == 1
    assert broker.ack(q, [first.receipt]).stale == [first.receipt]


@pytest.mark.django_db(transaction=True)
def test_receives_racing_the_sweep_release_each_lapsed_lease_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lease of a queue ran out; receivers (each taking back what it
    finds, a few at a time) and the sweep race over them on their own
    connections. Each lease is released once: counted once, announced once,
    delivered once more."""
    monkeypatch.setattr(claim, "LAPSED_PER_RECEIVE", 10)
    n_messages, n_receivers = 3000, 4
    q = make_queue("race", visibility_timeout=30, max_deliveries=0)
    ids = fill(q, n_messages)
    while broker.receive(q, max_messages=100, now=T0):
        pass
    events.drain()
    later = T0 + 60  # every lease ran out by then; the new ones do not
    swept = 0
    redelivered: list[tuple[int, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(n_receivers + 1)
    deadline = time.monotonic() + DEADLINE_SECONDS
    lapsed = Message.objects.filter(queue=q, state=S.IN_FLIGHT, lease_expires_at__lte=later)

    def race(i: int) -> None:
        nonlocal swept
        start.wait(DEADLINE_SECONDS)
        if i == n_receivers:  # the monitor's sweep
            while time.monotonic() < deadline and lapsed.exists():
                n = broker.expire_leases(now=later, limit=10)
                with lock:
                    swept += n
            return
        while time.monotonic() < deadline:
            got = broker.receive(q, max_messages=10, visibility_timeout=10_000, now=later)
            with lock:
                redelivered.extend((int(d.id), d.delivery_count) for d in got)
            if not got and not lapsed.exists() and not Message.objects.filter(queue=q, state=S.READY).exists():
                return

    assert run_threads(n_receivers + 1, race) == []
    assert sorted(mid for mid, _ in redelivered) == sorted(ids)  # each delivered once more
    assert {count for _, count in redelivered} == {2}
    # The race really ran: both released some. (SQLite's writers take turns
    # by polling for its lock, so unfairly that the sweep may get none.)
    assert swept < n_messages and (swept > 0 or connection.vendor == "sqlite"), swept
    t = totals(q)
    assert t["redelivered_total"] == n_messages and t["received_total"] == 2 * n_messages
    assert sorted(int(e["message"]) for e in announced("redelivery")) == sorted(ids)
    assert_counts_exact(q)
    assert live_counts(q)["in_flight"] == n_messages
