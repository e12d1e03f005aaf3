"""The claim: where a message is leased to a receive.

Every receive claims here, whoever asks: an HTTP receive, an SQS
ReceiveMessage, a consume stream (``receive`` and ``ack_and_receive`` on the
request's thread; ``areceive_on`` on the event loop over a connection the
caller holds). A claim leases ready messages, highest priority first, then
oldest; on a FIFO queue only each group's head, of the groups the consumer
owns. Due delayed messages become ready on the way, and leases of the queue
that ran out return (``release_lapsed``, as the monitor's sweep does them):
a queue that is received from redelivers without the monitor.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

import orjson
from asgiref.sync import sync_to_async
from django.db import connection, transaction

from .. import notify
from ..backends import PostgreSQL, Statement, dialect, prepared_cursor
from ..hashing import live_consumers, owned_slots
from ..models import Queue, epoch_to_iso
from ..states import MessageState as S
from .counters import Tally
from .durability import async_commit, async_commit_here, atomic
from .receipts import ReceiptResult, ack, match_receipts, parse_receipts, release_lapsed

# Messages one receive may claim.
MAX_RECEIVE = 100
# Leases that ran out one receive releases at most, longest lapsed first:
# its answer waits for them. More are left to the next receive, or the sweep.
LAPSED_PER_RECEIVE = MAX_RECEIVE


class Delivery(NamedTuple):
    """A message leased to a receive. A named tuple, not a frozen dataclass:
    a claim builds up to 100 of them, and a frozen dataclass's __init__
    costs several times more."""

    id: int
    body: str
    headers: str
    priority: int
    group: str
    delivery_count: int
    enqueued_at: float
    lease_token: str
    lease_expires_at: float

    @property
    def receipt(self) -> str:
        return f"{self.id}.{self.lease_token}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "body": orjson.Fragment(self.body),
            "headers": orjson.Fragment(self.headers),
            "priority": self.priority,
            "group": self.group or None,
            "delivery_count": self.delivery_count,
            "enqueued_at": epoch_to_iso(self.enqueued_at),
            "receipt": self.receipt,
            "lease_expires_at": epoch_to_iso(self.lease_expires_at),
        }


class Lapsed(NamedTuple):
    """A step of a one-statement receive that is not a statement: release
    the queue's leases that ran out (``release_lapsed``, in a transaction of
    its own); its driver sends back how many it released."""

    queue_id: int
    now: float


class Received(NamedTuple):
    """A receive's answer: its deliveries, and the verdict on the acks that
    rode on it (None when none did)."""

    deliveries: list[Delivery]
    acked: ReceiptResult | None = None


def receive(
    queue: Queue,
    *,
    max_messages: int = 1,
    visibility_timeout: int | None = None,
    consumer_id: str | None = None,
    now: float | None = None,
) -> list[Delivery]:
    """Lease up to ``max_messages`` ready messages: highest priority first,
    then oldest. One claiming statement, whatever the batch size. Returns the
    deliveries (empty when nothing is ready or the queue is paused)."""
    return _claim(queue, max_messages, visibility_timeout, consumer_id, now, None).deliveries


def ack_and_receive(
    queue: Queue,
    receipts: Sequence[str],
    *,
    max_messages: int = 1,
    visibility_timeout: int | None = None,
    consumer_id: str | None = None,
    now: float | None = None,
) -> tuple[list[Delivery], ReceiptResult]:
    """``ack(receipts)``, then ``receive``: what a consumer does between two
    batches. The acks come first, so no finished message is held while the
    receive waits.

    On PostgreSQL, for a queue that is neither paused nor FIFO, both are ONE
    statement (``PostgreSQL.receive``): one commit, not two. The claim skips
    the messages the acks delete: a message whose lease expired while it
    stayed ready still takes its ack (as SQS), and is not handed out again.
    A FIFO queue acks first and claims after, in two statements: the claim
    must see the ack, or a group whose message was just acked would look
    busy."""
    parsed = parse_receipts(receipts)
    if parsed and one_statement(queue):
        received = _claim(queue, max_messages, visibility_timeout, consumer_id, now, parsed)
        assert received.acked is not None
        return received.deliveries, received.acked
    acked = ack(queue, receipts) if parsed else ReceiptResult()
    return _claim(queue, max_messages, visibility_timeout, consumer_id, now, None).deliveries, acked


def one_statement(queue: Queue) -> bool:
    """Whether a receive of this queue (with its acks) is one statement:
    on PostgreSQL, for a queue that is neither paused nor FIFO."""
    return dialect().postgres and not queue.paused and not queue.fifo


async def areceive_on(
    db: Any,
    queue: Queue,
    receipts: Sequence[str],
    *,
    max_messages: int,
    visibility_timeout: int | None,
    consumer_id: str | None,
) -> Received:
    """``ack_and_receive`` (or ``receive`` without receipts) on the event
    loop, over ``db``, an autocommit ``psycopg.AsyncConnection`` the caller
    holds: for a queue where that is one statement (``one_statement``)."""
    if not one_statement(queue):
        raise ValueError("a receive runs on the event loop only on PostgreSQL, for a queue neither FIFO nor paused")
    parsed = parse_receipts(receipts)
    # On the loop, outside any transaction: wake this process's receives at once.
    wake = notify.wake
    # ``db`` is in autocommit: each statement is a transaction of its own.
    steps = _one_statement_steps(queue, max_messages, visibility_timeout, consumer_id, time.time(), parsed or None, wake, async_commit())
    step = next(steps)
    while True:
        if isinstance(step, Lapsed):
            result: Any = await _arelease_lapsed_apart(step)
        else:
            cur = await db.execute(*step)
            result = await cur.fetchall()
        try:
            step = steps.send(result)
        except StopIteration as done:
            received: Received = done.value
            return received


def _claim(
    queue: Queue,
    max_messages: int,
    visibility_timeout: int | None,
    consumer_id: str | None,
    now: float | None,
    acks: list[tuple[int, str, str]] | None,
) -> Received:
    """The claim on the caller's thread; with ``acks`` (only where it is
    ``one_statement``) the same statement acks them first."""
    if queue.paused:
        return Received([], None)
    now = time.time() if now is None else now
    sql = dialect()
    # Consistent hashing: a live consumer claims only the groups whose slots
    # it owns, so a group sticks to one consumer while that consumer lives.
    slots = owned_slots(consumer_id, live_consumers(queue.name)) if queue.fifo and consumer_id else None
    if sql.postgres and (acks is None or one_statement(queue)):
        # A FIFO claim too is one statement on PostgreSQL, when no acks ride
        # on it (``ack_and_receive`` says why those go first, apart).
        with prepared_cursor() as cur:
            def wake(ready: dict[int, int]) -> None:
                transaction.on_commit(functools.partial(notify.wake, ready))

            steps = _one_statement_steps(
                queue, max_messages, visibility_timeout, consumer_id, now, acks, wake, async_commit_here(), slots
            )
            step = next(steps)
            while True:
                if isinstance(step, Lapsed):
                    result: Any = _release_lapsed(step)
                else:
                    cur.execute(*step)
                    result = cur.fetchall()
                try:
                    step = steps.send(result)
                except StopIteration as done:
                    received: Received = done.value
                    if queue.fifo:
                        _one_per_group(received.deliveries)
                    return received
    if acks is not None:
        raise ValueError("acks ride on a claim only where it is one statement")
    expires = now + (queue.visibility_timeout if visibility_timeout is None else visibility_timeout)
    with atomic():
        tally = Tally()
        promote_due_in(tally, now, queue_id=queue.id)
        # Under SQLite's write lock: the claim below sees them ready.
        release_lapsed(now, limit=LAPSED_PER_RECEIVE, queue_id=queue.id)
        with connection.cursor() as cur:
            cur.execute(*sql.claim(queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id, slots=slots))
            rows = cur.fetchall()
        if queue.fifo:
            _one_per_group(rows)
        if rows:
            tally.move(queue.id, S.READY, S.IN_FLIGHT, len(rows))
            tally.add(queue.id, "received_total", len(rows))
        tally.save()
    return Received(to_deliveries(rows, expires), None)


def _one_statement_steps(
    queue: Queue,
    max_messages: int,
    visibility_timeout: int | None,
    consumer_id: str | None,
    now: float,
    acks: list[tuple[int, str, str]] | None,
    wake: Callable[[dict[int, int]], Any],
    relaxed: bool,
    slots: list[int] | None = None,
) -> Generator[Statement | Lapsed, Any, Received]:
    """The statements of a one-statement receive, whoever runs them (the
    request's thread or the event loop): each is yielded, and its rows sent
    back; a ``Lapsed`` step too, and how many it released sent back. Due
    delayed messages, made ready by the receive itself, are rare, and so
    are leases that ran out, which the statement only finds (and the
    ``Lapsed`` step releases): its snapshot did not see either ready, so a
    second claim takes what is missing, and the receives waiting on the
    queue are told (``wake`` for this process's; a release tells them
    itself). ``relaxed``: each statement is a transaction of its own that
    commits without waiting for the WAL flush."""
    sql = dialect()
    assert isinstance(sql, PostgreSQL)
    expires = now + (queue.visibility_timeout if visibility_timeout is None else visibility_timeout)
    pairs = sorted({(mid, token) for mid, token, _ in acks}) if acks is not None else None
    rows, promoted, found, lapsed = sql.split_receive(
        (yield sql.receive(
            queue, now=now, expires=expires, max_messages=max_messages, consumer_id=consumer_id, acks=pairs,
            slots=slots, async_commit=relaxed,
        ))
    )
    released = (yield Lapsed(queue.id, now)) if lapsed else 0
    if promoted or released:
        reclaimed = []
        if len(rows) < max_messages:
            reclaimed = yield sql.reclaim(
                queue, max_messages=max_messages - len(rows), expires=expires, consumer_id=consumer_id, slots=slots,
                async_commit=relaxed,
            )
            rows += reclaimed
        # Those it did not take itself are others' to claim: as many
        # receives as that are woken, not all of them. (The released ones'
        # wake-up went with their release: together at least as many as
        # are left, whichever of them the second claim took.)
        if (left := promoted - len(reclaimed)) > 0:
            yield sql.announce(queue.id, left)
            wake({queue.id: left})
    return Received(to_deliveries(rows, expires), match_receipts(acks, found) if acks is not None else None)


def _release_lapsed(step: Lapsed) -> int:
    """A ``Lapsed`` step, on Django's connection: a transaction of its own."""
    with atomic():
        return release_lapsed(step.now, limit=LAPSED_PER_RECEIVE, queue_id=step.queue_id)


def _release_lapsed_apart(step: Lapsed) -> int:
    """A ``Lapsed`` step of a receive on the event loop, on a worker thread
    whose connection goes back to the pool after."""
    try:
        return _release_lapsed(step)
    finally:
        connection.close()


_arelease_lapsed_apart = sync_to_async(_release_lapsed_apart, thread_sensitive=False)


def to_deliveries(rows: Sequence[Sequence[Any]], expires: float) -> list[Delivery]:
    """A claim's rows (``backends.common.CLAIMED``) as deliveries, in delivery order."""
    deliveries = [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], expires) for r in rows]
    deliveries.sort(key=lambda x: (-x.priority, x.id))
    return deliveries


def _one_per_group(rows: Sequence[Sequence[Any]]) -> None:
    """Raise if a FIFO claim's rows (or deliveries: the group is the fifth
    column of both) hold two messages of one group. The head test runs
    against the statement's snapshot, where every member of a group is
    still ready, so the group's head is the only candidate; this is a belt
    to those braces."""
    groups = [r[4] for r in rows if r[4]]
    if len(groups) != len(set(groups)):
        raise AssertionError("FIFO claim returned two messages of one group")


def promote_due_in(tally: Tally, now: float, *, queue_id: int | None = None) -> int:
    """Delayed messages (of one queue, or all) whose time has come become
    ready, counted in ``tally``; returns how many. In the caller's transaction."""
    with connection.cursor() as cur:
        cur.execute(*dialect().promote(now, queue_id))
        rows = cur.fetchall()
    per_queue: dict[int, int] = defaultdict(int)
    for (qid,) in rows:
        per_queue[qid] += 1
    for qid, n in per_queue.items():
        tally.move(qid, S.DELAYED, S.READY, n)
    return len(rows)
