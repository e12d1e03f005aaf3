"""Operator actions: what the admin, the dashboard, the API's admin calls
and ``mq queue`` do by hand. Requeue, move, dead-letter, delete, purge,
redrive, pause, resume, and browsing without leasing.

Each locks the rows it changes, in id order, before it reads their state:
a receive, an ack or the lease sweep acting on the same rows waits for the
action (or skips the rows) and then sees its outcome.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

from django.db import connection, transaction

from .. import events
from ..backends import dialect
from ..exceptions import InvalidValue, QueueNotFound
from ..models import Message, Queue
from ..states import MessageState as S
from .counters import Tally
from .queues import hold_queues, put_queue, ready_ids
from .receipts import Leased, dead_letter

# Messages one operator action may touch: a bigger selection is a purge or a
# redrive, which the queue actions do without holding every id in memory.
MAX_OPERATOR_MESSAGES = 10_000
# Messages one DELETE takes at most (a purge of millions runs in chunks).
DELETE_CHUNK = 5000


class Locked(NamedTuple):
    """A message locked by an operator action."""

    id: int
    queue_id: int
    state: str
    delivery_count: int
    consumer_id: str | None
    origin_queue_id: int | None


def _lock_messages(ids: Iterable[int | str]) -> list[Locked]:
    """The messages with these ids, locked until commit."""
    wanted = sorted({int(i) for i in ids})
    if len(wanted) > MAX_OPERATOR_MESSAGES:
        raise InvalidValue(f"An action may touch at most {MAX_OPERATOR_MESSAGES} messages; narrow the selection.")
    rows: list[Locked] = []
    with connection.cursor() as cur:
        for start in range(0, len(wanted), 1000):
            cur.execute(*dialect().lock_messages(wanted[start : start + 1000]))
            rows += [Locked._make(r) for r in cur.fetchall()]
    return rows


def requeue(message_ids: Iterable[int | str], *, by: str = "", now: float | None = None) -> int:
    """Make messages ready now, by hand: dead, delayed and in-flight ones (the
    lease is fenced, so the old holder's ack or nack is stale). A message that
    was dead-lettered goes back to the queue it came from. Delivery counts are
    kept. Ready messages in their own queue are left alone. Returns how many
    moved."""
    now = time.time() if now is None else now
    with transaction.atomic():
        rows = _lock_messages(message_ids)
        origins = hold_queues(m.origin_queue_id for m in rows if m.origin_queue_id is not None)
        tally = Tally()
        by_target: dict[int, list[int]] = defaultdict(list)
        for m in rows:
            if m.state == S.READY and m.origin_queue_id is None:
                continue
            # An origin deleted meanwhile: home is where it is.
            target_queue = m.origin_queue_id if m.origin_queue_id in origins else m.queue_id
            by_target[target_queue].append(m.id)
            tally.move(m.queue_id, m.state, None)
            tally.move(target_queue, None, S.READY)
            if m.origin_queue_id is not None:
                tally.add(m.origin_queue_id, "dead_out", -1)
            if m.state == S.IN_FLIGHT:
                # Counted like a lease that ran out: its holder lost it.
                tally.add(m.queue_id, "redelivered_total")
        if not by_target:
            return 0
        names = dict(Queue.objects.filter(id__in=list(by_target)).values_list("id", "name"))
        with connection.cursor() as cur:
            for target_queue, ids in by_target.items():
                cur.execute(*dialect().ready_again(ids, queue_id=target_queue, now=now, fresh=False))
                for mid in ids:
                    events.emit("requeue", names[target_queue], message=str(mid), by=by)
        tally.save()
    return sum(len(ids) for ids in by_target.values())


def move(message_ids: Iterable[int | str], target: Queue, *, by: str = "", now: float | None = None) -> int:
    """Move messages into another queue: ready now there (delayed ones keep
    their delay), leases fenced, delivery counts kept, no longer counted as
    dead-lettered. Messages already in ``target`` are left alone. Returns how
    many moved."""
    now = time.time() if now is None else now
    with transaction.atomic():
        rows = [m for m in _lock_messages(message_ids) if m.queue_id != target.id]
        if not rows:
            return 0
        if not hold_queues([target.id]):
            raise QueueNotFound(f"No queue named {target.name!r}.")
        tally = Tally()
        for m in rows:
            state = S.DELAYED if m.state == S.DELAYED else S.READY
            tally.move(m.queue_id, m.state, None)
            tally.move(target.id, None, state)
            if m.origin_queue_id is not None:
                tally.add(m.origin_queue_id, "dead_out", -1)
        with connection.cursor() as cur:
            cur.execute(*dialect().move_into([m.id for m in rows], queue_id=target.id, now=now))
        names = dict(Queue.objects.filter(id__in={m.queue_id for m in rows}).values_list("id", "name"))
        for m in rows:
            events.emit("requeue", target.name, message=str(m.id), from_queue=names[m.queue_id], by=by)
        tally.save()
    return len(rows)


def dead_letter_now(message_ids: Iterable[int | str], reason: str, *, by: str = "", now: float | None = None) -> int:
    """Dead-letter messages by hand, as if they had used up their deliveries:
    into their queue's dead-letter queue, or dead in place. Leases are fenced.
    Dead messages are left alone. Returns how many moved."""
    now = time.time() if now is None else now
    reason = reason or (f"dead-lettered by {by}" if by else "dead-lettered by an operator")
    with transaction.atomic():
        groups: dict[tuple[int, str], list[Leased]] = defaultdict(list)
        for m in _lock_messages(message_ids):
            if m.state != S.DEAD:
                groups[(m.queue_id, m.state)].append(Leased(m.id, m.queue_id, m.delivery_count, m.consumer_id, m.origin_queue_id))
        if not groups:
            return 0
        queues = Queue.objects.select_related("dead_letter_queue").in_bulk({qid for qid, _state in groups})
        tally = Tally()
        for (qid, state), rows in groups.items():
            dead_letter(queues[qid], rows, tally, now=now, reason=reason, source_state=S(state))
        tally.save()
    return sum(len(rows) for rows in groups.values())


def delete_messages(message_ids: Iterable[int | str], *, by: str = "") -> int:
    """Delete messages in any state (a leased one's ack becomes stale),
    counted as purged. Returns how many were deleted."""
    with transaction.atomic():
        by_queue: dict[int, list[int]] = defaultdict(list)
        for m in _lock_messages(message_ids):
            by_queue[m.queue_id].append(m.id)
        queues = Queue.objects.in_bulk(list(by_queue))
        for qid, ids in by_queue.items():
            n = delete_counted(queues[qid], Message.objects.filter(id__in=ids), "purged_total")
            events.emit("purge", queues[qid].name, count=n, messages=[str(i) for i in ids[:100]], by=by)
    return sum(len(ids) for ids in by_queue.values())


def delete_counted(queue: Queue, qs: Any, total_counter: str) -> int:
    """Delete the messages of ``qs`` (all in ``queue``; a queryset, or their
    ids), keeping counters right, and count them in ``total_counter``. In
    the caller's transaction."""
    ids = qs if isinstance(qs, list) else list(qs.values_list("id", flat=True))
    if not ids:
        return 0
    # Count the rows as the DELETE found them: between the read above and
    # the delete a consumer may have claimed, nacked or acked one (PostgreSQL),
    # and a count from the read would then drift.
    deleted: list[tuple[int, str, int | None]] = []
    with connection.cursor() as cur:
        for start in range(0, len(ids), DELETE_CHUNK):
            cur.execute(*dialect().delete_messages(ids[start : start + DELETE_CHUNK]))
            deleted += cur.fetchall()
    tally = Tally()
    for _mid, state, origin in deleted:
        tally.move(queue.id, state, None)
        if origin is not None:
            tally.add(origin, "dead_out", -1)
    tally.add(queue.id, total_counter, len(deleted))
    tally.save()
    return len(deleted)


def purge(queue: Queue) -> int:
    """Delete every message in the queue, leased ones too (their acks become
    stale). Returns how many were deleted."""
    with transaction.atomic():
        # NO KEY: a plain FOR UPDATE would also block every insert that
        # references the queue (messages, counter deltas) while this purge
        # waits for message rows those inserters hold: a deadlock.
        Queue.objects.select_for_update(no_key=True).filter(pk=queue.pk).first()
        n = delete_counted(queue, Message.objects.filter(queue=queue), "purged_total")
        events.emit("purge", queue.name, count=n)
    return n


def redrive(queue: Queue, *, max_messages: int | None = None, now: float | None = None) -> int:
    """Give dead messages another life: those dead in this queue go back to
    ready here; those dead-lettered into this queue go back to the queue they
    came from, with a fresh delivery count. Leased messages are left alone.
    Returns how many moved. Raises InvalidValue for a ``max_messages`` below 1."""
    if max_messages is not None and max_messages < 1:
        # 0 would otherwise mean "no limit" here and a negative LIMIT is an SQL error.
        raise InvalidValue(f"max must be at least 1, not {max_messages}.")
    now = time.time() if now is None else now
    sql = dialect()
    with transaction.atomic():
        # Locked, in id order, as every action that moves many rows locks them.
        selected = Message.objects.redrivable(queue).select_for_update().order_by("id")
        if max_messages:
            selected = selected[:max_messages]
        rows = list(selected.values_list("id", "state", "origin_queue_id"))
        if not rows:
            return 0
        origins = hold_queues(origin for _mid, _state, origin in rows if origin is not None)
        tally = Tally()
        by_target: dict[int, list[int]] = defaultdict(list)
        for mid, state, origin in rows:
            target_queue = origin if origin in origins else queue.id
            by_target[target_queue].append(mid)
            tally.move(queue.id, state, None)
            tally.move(target_queue, None, S.READY)
            if origin is not None:
                tally.add(origin, "dead_out", -1)
        with connection.cursor() as cur:
            for target_queue, ids in by_target.items():
                cur.execute(*sql.ready_again(ids, queue_id=target_queue, now=now, fresh=True))
        tally.save()
        events.emit("redrive", queue.name, count=len(rows))
    return len(rows)


def pause(queue: Queue, *, by: str = "") -> Queue:
    """Stop deliveries from a queue (sends are still accepted)."""
    with transaction.atomic():
        queue, _created = put_queue(queue.name, {"paused": True})
        events.emit("pause", queue.name, by=by)
    return queue


def resume(queue: Queue, *, by: str = "") -> Queue:
    """Deliver from a paused queue again; waiting receivers are woken."""
    with transaction.atomic():
        queue, _created = put_queue(queue.name, {"paused": False})
        events.emit("resume", queue.name, by=by)
    return queue


def browse(
    queue: Queue, *, state: str, limit: int = 100, after: int | None = None, group: str | None = None, newest: bool = False
) -> list[Message]:
    """Messages in one state (of one FIFO group), oldest first (or newest),
    without leasing them. ``after`` is the last id of the previous page
    (keyset pagination: pages stay stable while messages come and go).
    State ``dead`` includes messages dead-lettered out of this queue into its
    dead-letter queue. Served by mq_msg_state (delayed and dead), the ready
    ones by mq_msg_claim (``ready_ids``), in-flight ones by mq_msg_lease and
    a group's by mq_msg_group."""
    if state == S.READY and not group:
        # The page's ids first: as "id IN (subquery)" the planner may
        # read the whole table to hash-join them.
        qs = Message.objects.filter(id__in=ready_ids(queue.id, after=after, newest=newest, limit=limit))
    else:
        qs = Message.objects.dead_of(queue) if state == S.DEAD else Message.objects.filter(queue=queue, state=state)
        if group:
            qs = qs.filter(group_key=group)
        if after is not None:
            qs = qs.filter(id__lt=after) if newest else qs.filter(id__gt=after)
    few = state == S.IN_FLIGHT or (state == S.READY and not group)
    ordered = qs.select_related("queue", "origin_queue").in_id_order(newest=newest, few=few)
    return list(ordered[:limit])
