"""Publish: enqueue a batch of messages, all or nothing, with deduplication
and the hand-off of new messages to receives waiting in this process."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.db import connection, transaction

from .. import notify
from ..backends import PostgreSQL, dialect, prepared_cursor
from ..exceptions import MessageTooLarge, QueueFull, QueueNotFound
from ..hashing import UNGROUPED, slot_of
from ..models import Queue, QueueCounts
from ..states import MessageState as S
from .claim import Delivery
from .counters import Tally, queue_counts
from .queues import forget_queues


@dataclass(slots=True)
class NewMessage:
    """One message to publish; ``body`` is already-encoded JSON."""

    body: bytes
    priority: int = 0
    delay: int | None = None
    group: str | None = None
    dedup_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Published(NamedTuple):
    """One sent message's answer (a named tuple: a batch makes 1,000)."""

    id: str
    duplicate: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "duplicate": self.duplicate}


class NewRow(NamedTuple):
    """A new message's values, in ``backends.common.NEW_MESSAGE_COLUMNS``
    order: the names of a ``Row``'s fields."""

    queue_id: int
    state: str
    priority: int
    body: str
    headers: str
    group_key: str
    group_slot: int | None
    dedup_id: str | None
    delivery_count: int
    enqueued_at: float
    visible_at: float
    last_error: str
    # Set only for a message handed to a waiting receive (``Handing``).
    lease_token: str | None = None
    lease_expires_at: float | None = None
    consumer_id: str | None = None


# A new message's row: a plain tuple of NewRow's fields. A send of 1,000
# makes 1,000, and a named tuple took several times as long to make; where
# a row is read by name (a handed one), it is made a NewRow.
Row = tuple[Any, ...]
_STATE, _PRIORITY = NewRow._fields.index("state"), NewRow._fields.index("priority")

_READY, _DELAYED, _IN_FLIGHT = S.READY.value, S.DELAYED.value, S.IN_FLIGHT.value


def new_rows(queue: Queue, messages: Sequence[NewMessage], now: float) -> list[Row]:
    """The rows of new messages (a send of 1,000 makes 1,000: the queue's
    settings are looked up once)."""
    queue_id, default_delay, fifo = queue.id, queue.delay, queue.fifo
    rows = []
    for m in messages:
        delay = default_delay if m.delay is None else m.delay
        headers = orjson.dumps(m.headers).decode() if m.headers else "{}"
        group = m.group or ""
        slot = slot_of(group) if group else (UNGROUPED if fifo else None)
        state = _DELAYED if delay > 0 else _READY
        rows.append((queue_id, state, m.priority, m.body.decode(), headers, group, slot, m.dedup_id, 0, now, now + delay, "", None, None, None))
    return rows


def sent_tally(queue: Queue, rows: Sequence[Row]) -> Tally:
    """The counter changes of sending these rows."""
    tally = Tally()
    states = Counter(row[_STATE] for row in rows)
    for state, n in states.items():
        tally.move(queue.id, None, state, n)
    tally.add(queue.id, "sent_total", len(rows))
    tally.add(queue.id, "received_total", states[_IN_FLIGHT])
    return tally


def publish(queue: Queue, messages: Sequence[NewMessage], *, now: float | None = None) -> list[Published]:
    """Enqueue a batch, all or nothing. Returns one result per input, in order.

    Raises MessageTooLarge, QueueFull (when ``max_depth`` would be exceeded),
    and QueueNotFound for a queue another process deleted since this one
    cached it. A ``dedup_id`` seen on this queue within the dedup window
    returns the first message's id as a duplicate and enqueues nothing for
    it."""
    try:
        return _publish(queue, messages, time.time() if now is None else now)
    except QueueNotFound:
        forget_queues()
        raise


def _publish(queue: Queue, messages: Sequence[NewMessage], now: float) -> list[Published]:
    limit = queue.max_message_bytes
    deduplicated = False
    for i, m in enumerate(messages):
        if len(m.body) > limit:
            raise MessageTooLarge(f"Message {i} body is {len(m.body)} bytes; queue {queue.name!r} accepts at most {limit}.")
        if m.dedup_id is not None:
            deduplicated = True
    if queue.max_depth is not None:
        c = queue_counts([queue.id], now=now).get(queue.id, QueueCounts())
        waiting = c.ready + c.delayed + c.in_flight
        over = waiting + len(messages) - queue.max_depth
        if over > 0:
            what = "this message" if len(messages) == 1 else f"this batch of {len(messages)}"
            raise QueueFull(
                f"Queue {queue.name!r} holds {waiting} of at most {queue.max_depth} messages; "
                f"{what} would exceed it by {over}.",
                retry_after=1,
            )
    sql = dialect()
    if not deduplicated and isinstance(sql, PostgreSQL):
        # The common case: no dedup ids. Messages, counters and the NOTIFY
        # in ONE statement, atomic on its own: one round trip, no BEGIN.
        rows = new_rows(queue, messages, now)
        with Handing(queue, now) as handing:
            rows = handing.lease(rows)
            tally = sent_tally(queue, rows)
            with prepared_cursor() as cur:
                cur.execute(*sql.send(queue.id, rows, *tally.statements()))
                ids = _ids_in_row_order(queue, rows, cur.fetchall()[0][0] or [])
            handing.inserted(ids)
        tally.wake_at_commit()
        return [Published(str(pk), False) for pk in ids]
    first_of: dict[str, int] = {}  # dedup id -> index of its first use in this batch
    for i, m in enumerate(messages):
        if m.dedup_id is not None and m.dedup_id not in first_of:
            first_of[m.dedup_id] = i
    return _publish_deduplicated(queue, messages, first_of, now)


def _publish_deduplicated(queue: Queue, messages: Sequence[NewMessage], first_of: dict[str, int], now: float) -> list[Published]:
    """``publish`` in a transaction: dedup keys are claimed, the new messages
    inserted and the keys bound to them, then the counters."""
    sql = dialect()
    window = settings.MQ_DEDUP_WINDOW_SECONDS
    results: list[Published | None] = [None] * len(messages)
    with Handing(queue, now) as handing, transaction.atomic(), connection.cursor() as cur:
        fresh_keys: set[str] = set()
        if first_of:
            cur.execute(*sql.claim_dedup_keys(queue.id, list(first_of), now, now + window))
            fresh_keys = {row[0] for row in cur.fetchall()}
            taken = {k: v for k, v in first_of.items() if k not in fresh_keys}
            if taken:
                cur.execute(*sql.dedup_message_ids(queue.id, list(taken)))
                seen = dict(cur.fetchall())
                for key, i in taken.items():
                    results[i] = Published(str(seen.get(key) or ""), True)
        row_index = [
            i
            for i, m in enumerate(messages)
            # Not a duplicate, nor a repeat within the batch (resolved below).
            if results[i] is None and (m.dedup_id is None or first_of[m.dedup_id] == i)
        ]
        rows = handing.lease(new_rows(queue, [messages[i] for i in row_index], now))
        ids: list[int] = []
        if rows:
            with prepared_cursor() as insert:
                insert.execute(*sql.insert_messages(queue.id, rows))
                ids = _ids_in_row_order(queue, rows, [r[0] for r in insert.fetchall()])
        handing.inserted(ids)
        for i, pk in zip(row_index, ids, strict=True):
            results[i] = Published(str(pk), False)
        bind = {
            dedup: pk
            for i, pk in zip(row_index, ids, strict=True)
            if (dedup := messages[i].dedup_id) is not None and dedup in fresh_keys
        }
        if bind:
            cur.execute(*sql.bind_dedup_keys(queue.id, bind))
        for i, m in enumerate(messages):
            if results[i] is None:  # repeat of a dedup id earlier in this batch
                first = results[first_of[m.dedup_id]]  # type: ignore[index]
                assert first is not None
                results[i] = Published(first.id, True)
        sent_tally(queue, rows).save()
    return [r for r in results if r is not None]


def _ids_in_row_order(queue: Queue, rows: Sequence[Row], ids: Sequence[int]) -> list[int]:
    """Ids come from one sequence inside one statement, so they ascend in row
    order: sorted, they pair with their rows. None at all: the queue is gone
    (``Statements.queue_held``)."""
    if rows and not ids:
        raise QueueNotFound(f"No queue named {queue.name!r}.")
    if len(ids) != len(rows):
        raise AssertionError(f"inserted {len(rows)} messages, got {len(ids)} ids back")
    return sorted(ids)


class Handing:
    """Leases a send's new ready messages to receives waiting on the queue in
    this process, in the send's own INSERT: such a receive answers as soon
    as the send commits, without a claim of its own (a claim, a thread
    hand-off and a loop turn less on the way from send to consumer).

    ``lease(rows)`` rewrites the rows of the messages it hands (in flight,
    first delivery, a lease and its token, the receive's consumer), before
    the INSERT; ``inserted(ids)`` records their ids; leaving the block after
    the commit hands each receive its deliveries. A block that raises hands
    nothing: the receives look again for themselves. Inside a caller's
    transaction nothing is handed (a rollback after we leave would take back
    what we handed), nor for a paused or FIFO queue (a group's order is the
    claim's to keep)."""

    def __init__(self, queue: Queue, now: float) -> None:
        self.queue = queue
        self.now = now
        self.eligible = not (queue.paused or queue.fifo or connection.in_atomic_block)
        self.given: list[tuple[notify.Waiter, list[int]]] = []  # waiter, indexes into rows
        self.rows: list[Row] = []
        self.ids: list[int] = []

    def lease(self, rows: list[Row]) -> list[Row]:
        """The rows to insert: those handed to a waiting receive leased to it."""
        self.rows = rows
        if not self.eligible:
            return rows
        ready = [i for i, row in enumerate(rows) if row[_STATE] == _READY]
        if not ready:
            return rows
        waiters = _to_live_consumers(notify.take(self.queue.id, len(ready)))
        if not waiters:
            return rows
        # As a claim takes them: highest priority first, then oldest.
        ready.sort(key=lambda i: (-rows[i][_PRIORITY], i))
        for w in waiters:
            assert w.offer is not None
            mine, ready = ready[: w.offer.max_messages], ready[w.offer.max_messages :]
            self.given.append((w, mine))
            vt = self.queue.visibility_timeout if w.offer.visibility_timeout is None else w.offer.visibility_timeout
            for i in mine:
                rows[i] = NewRow._make(rows[i])._replace(
                    state=_IN_FLIGHT,
                    delivery_count=1,
                    lease_token=secrets.token_hex(16),
                    lease_expires_at=self.now + vt,
                    consumer_id=w.offer.consumer_id,
                )
        return rows

    def inserted(self, ids: list[int]) -> None:
        self.ids = ids

    def __enter__(self) -> Handing:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for w, mine in self.given:
            if exc_type is not None or not mine:
                notify.hand(w, True)
                continue
            out = []
            for i in mine:
                r = NewRow._make(self.rows[i])
                assert r.lease_token is not None and r.lease_expires_at is not None
                out.append(Delivery(self.ids[i], r.body, r.headers, r.priority, r.group_key, 1, r.enqueued_at, r.lease_token, r.lease_expires_at))
            out.sort(key=lambda d: (-d.priority, d.id))
            notify.hand(w, out)


def _to_live_consumers(waiters: list[notify.Waiter]) -> list[notify.Waiter]:
    """The taken waiters whose consumer (if they name one) is not dead; the
    others are told to look again, where their claim finds the consumer dead
    and takes nothing. A receive checks its consumer before it waits and
    each claim checks it again: without this, a consumer declared dead while
    its stream stayed open was still handed new messages, each taken back by
    the monitor's sweep and delivered again. A consumer declared dead
    between this check and the commit is the monitor's straggler sweep's
    (health.STRAGGLER_WINDOW_SECONDS), as for a claim."""
    named = {w.offer.consumer_id for w in waiters if w.offer is not None and w.offer.consumer_id is not None}
    if not named:
        return waiters
    with connection.cursor() as cur:
        cur.execute(*dialect().live_consumers(sorted(named)))
        alive = {row[0] for row in cur.fetchall()}
    live = []
    for w in waiters:
        assert w.offer is not None
        if w.offer.consumer_id is None or w.offer.consumer_id in alive:
            live.append(w)
        else:
            notify.hand(w, True)
    return live
