"""Waiting: the one long-poll loop. An HTTP receive with ``wait``, an SQS
ReceiveMessage with ``WaitTimeSeconds`` and a consume stream between two
deliveries all wait here (``long_poll``), and all get its guarantees:

- no lost wake-up: the receive registers as a waiter *before* it looks,
  so a send between the look and the wait still wakes it;
- a send in this process may hand it messages directly (``notify.Offer``,
  ``publish.Handing``), leased in the send's own INSERT;
- nothing leased is lost to a client that hangs up: a look cut short
  (``unlost``) or a hand-off that finds nobody waiting (``notify``) puts
  what it leased back to ready at once, as if never delivered, instead of
  at the visibility timeout;
- it is woken for what no send announced (delays coming due, a NOTIFY
  lost with its connection, another process on SQLite) by its process's
  one watch (``notify``), which counts what could be claimed on the waited-on
  queues every second: a waiting receive does not look again on its own,
  so a thousand of them idle cost one statement a second, not a thousand.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection

from .. import notify
from ..backends import dialect
from ..models import Queue
from ..speedups import holds_nothing
from ..states import MessageState as S
from .claim import Delivery, Received, ack_and_receive, receive
from .consumers import check_consumer
from .counters import Tally
from .durability import atomic
from .queues import aget_queue

log = logging.getLogger("queues.broker")

# A look: (queue, how many looks came before) -> what it received.
Look = Callable[[Queue, int], Awaitable[Received]]


async def long_poll(
    queue: Queue,
    look: Look,
    *,
    offer: notify.Offer | None,
    wait: float,
    may_wait: Callable[[Received], bool] | None = None,
    once: bool = False,
    on_wait: Callable[[notify.Waiter | None], None] | None = None,
) -> Received:
    """Look for messages; while a look finds none, wait for a wake-up or a
    send's hand-off and look again, for up to ``wait`` seconds. Returns the
    deliveries (empty when none came in time) and the verdict on the acks
    that rode on a look.

    ``may_wait``: whether a look that found nothing may wait (a stream with
    frames to apply may not); ``once``: one look and at most one wait
    (a stream's round: it comes back with new acks and credit);
    ``on_wait``: told the waiter while it waits (and None after), so that
    something else can interrupt the wait (``Waiter.interrupt``). The queue
    is read again after each wait: a pause or a new setting takes effect."""
    deadline = time.monotonic() + wait
    looks = 0
    acked = None
    while True:
        with notify.waiter(queue.id, offer, on_unanswered=release_unanswered_now, interchangeable=not queue.fifo) as waiter:
            got = await unlost(queue.id, look(queue, looks))
            looks += 1
            acked = got.acked if got.acked is not None else acked
            remaining = deadline - time.monotonic()
            if got.deliveries or remaining <= 0 or (may_wait is not None and not may_wait(got)):
                return Received(got.deliveries, acked)
            if on_wait is not None:
                on_wait(waiter)
            try:
                handed = await waiter.wait(remaining)
            finally:
                if on_wait is not None:
                    on_wait(None)
            if isinstance(handed, list):
                return Received(handed, acked)
            if once or handed is False:
                # Timed out: nothing was announced, the watch found nothing
                # to wake it for. Another look would cost a claim per
                # waiting receive per timeout, to find what they would.
                return Received([], acked)
        queue = await aget_queue(queue.name)


def thread_looks(
    receipts: Sequence[str] | None, *, max_messages: int, visibility_timeout: int | None, consumer_id: str | None
) -> Look:
    """The looks of a receive on the request's thread: the first checks the
    consumer (nothing is acked for one that is unknown or dead) and applies
    the ``receipts`` (before the claim, so a long poll holds no finished
    message; on PostgreSQL in the claim's own statement); the others only
    claim. A look that leased nothing gives the database connection back in
    the same thread hand-off, so a waiting receive holds none."""
    options: dict[str, Any] = {"max_messages": max_messages, "visibility_timeout": visibility_timeout, "consumer_id": consumer_id}

    async def look(queue: Queue, looks: int) -> Received:
        if looks == 0 and (consumer_id is not None or receipts is not None):
            return await _afirst_look(queue, receipts, options)
        return Received(await _areceive_before_wait(queue, options))

    return look


def first_look(queue: Queue, receipts: Sequence[str] | None, options: dict[str, Any]) -> Received:
    """A receive's first look (``thread_looks``) on the caller's thread."""
    if options["consumer_id"] is not None:
        check_consumer(options["consumer_id"])
    if receipts is None:
        return Received(_before_wait(receive(queue, **options)))
    deliveries, acked = ack_and_receive(queue, receipts, **options)
    return Received(_before_wait(deliveries), acked)


def _receive_before_wait(queue: Queue, options: dict[str, Any]) -> list[Delivery]:
    return _before_wait(receive(queue, **options))


def _before_wait(deliveries: list[Delivery]) -> list[Delivery]:
    # Inside a caller's transaction (tests, or code that called us in one)
    # the connection is the caller's and is left alone.
    if not deliveries and not connection.in_atomic_block:
        connection.close()
        holds_nothing()
    return deliveries


_afirst_look = sync_to_async(first_look)
_areceive_before_wait = sync_to_async(_receive_before_wait)


async def unlost(queue_id: int, look: Awaitable[Received]) -> Received:
    """Await a receive's look so that, should the receive be cancelled
    meanwhile (its client hung up), what the look leases goes back to ready
    as soon as the claim finishes, as if never delivered, instead of at its
    visibility timeout: no client will ever see it."""
    task = asyncio.ensure_future(look)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(functools.partial(_release_if_leased, queue_id))
        raise


def _release_if_leased(queue_id: int, task: asyncio.Future[Received]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    deliveries = task.result().deliveries
    if deliveries:
        task.get_loop().run_in_executor(None, release_unanswered_now, queue_id, deliveries)


def release_unanswered(queue_id: int, deliveries: Sequence[Delivery]) -> int:
    """Messages leased to a receive that went away before it could answer
    (its client hung up during its claim, or before a send could hand it
    what it leased for it): back to ready at once, as if never delivered.
    Each is fenced by its lease token: one whose lease moved on is left
    alone. Returns how many."""
    if not deliveries:
        return 0
    with atomic():
        with connection.cursor() as cur:
            cur.execute(*dialect().unanswered(queue_id, [(d.id, d.lease_token) for d in deliveries]))
            n = cur.rowcount
        if n:
            tally = Tally()
            tally.move(queue_id, S.IN_FLIGHT, S.READY, n)
            tally.save()
    return n


def release_unanswered_now(queue_id: int, deliveries: list[Delivery]) -> None:
    """``release_unanswered`` on a thread of its own (from the event loop)."""
    try:
        n = release_unanswered(queue_id, deliveries)
        log.info("a receive went away before answering: %d message(s) leased to it back to ready", n)
    except Exception:
        log.exception(
            "could not release %d message(s) leased to a receive that went away; they return at their visibility timeout",
            len(deliveries),
        )
    finally:
        connection.close()
