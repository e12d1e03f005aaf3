"""Queue counters: exact depth without counting rows.

Every operation that changes a queue's messages appends a counter delta in
the same transaction (``Tally``); the monitor folds the deltas into
``QueueStats`` each second; a read adds the folded row and the pending
deltas (``queue_counts``), a few indexed queries whatever the number of
stored messages.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from django.db import connection, transaction
from django.db.models import Count

from .. import notify
from ..backends import dialect
from ..models import COUNTER_FIELDS, Message, Queue, QueueCounts, QueueStats
from ..states import MessageState as S

STATE_COUNTER = {S.READY: "ready", S.DELAYED: "delayed", S.IN_FLIGHT: "in_flight", S.DEAD: "dead_state"}


class Tally:
    """Counter changes made by one transaction, saved as one delta row per queue."""

    def __init__(self) -> None:
        self.deltas: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        # Per queue, how many messages became ready (None: unknown, wake all).
        self.ready_queues: dict[int, int | None] = {}

    def add(self, queue_id: int, counter: str, n: int = 1) -> None:
        if n:
            self.deltas[queue_id][counter] += n

    def move(self, queue_id: int, source: str | None, target: str | None, n: int = 1) -> None:
        """``n`` messages left state ``source`` and entered ``target`` (None:
        they were created, or deleted). Messages that became ready wake the
        receives waiting on the queue at commit."""
        if source is not None:
            self.add(queue_id, STATE_COUNTER[S(source)], -n)
            if source == S.READY and self.ready_queues.get(queue_id):
                # Made ready and taken in one transaction: fewer to wake for.
                left = self.ready_queues[queue_id] - n  # type: ignore[operator]
                if left > 0:
                    self.ready_queues[queue_id] = left
                else:
                    del self.ready_queues[queue_id]
        if target is not None:
            self.add(queue_id, STATE_COUNTER[S(target)], n)
            if target == S.READY:
                before = self.ready_queues.get(queue_id, 0)
                self.ready_queues[queue_id] = None if before is None else before + n

    def wake_all(self, queue_id: int) -> None:
        """Every receive waiting on the queue looks again at commit (what is
        ready there changed by an unknown number: a resumed queue)."""
        self.ready_queues[queue_id] = None

    def statements(self) -> tuple[tuple[str, list[Any]] | None, tuple[str, list[Any]] | None]:
        """The delta INSERT and the NOTIFY (PostgreSQL) this tally needs, each
        None when not needed."""
        rows = [(qid, *(d.get(f, 0) for f in COUNTER_FIELDS)) for qid, d in self.deltas.items() if any(d.values())]
        sql = dialect()
        delta = sql.delta_insert(rows) if rows else None
        wake = sql.notify_ready(self.ready_queues) if self.ready_queues else None
        return delta, wake

    def save(self) -> None:
        """Write the deltas and arrange wake-ups; call inside the transaction."""
        statement = dialect().save_counts(*self.statements())
        if statement is not None:
            with connection.cursor() as cur:
                cur.execute(*statement)
        self.wake_at_commit()

    def wake_at_commit(self) -> None:
        if self.ready_queues:
            ready = dict(self.ready_queues)
            # Same process: wake at once, without a round trip through the server.
            transaction.on_commit(lambda: notify.wake(ready))


def queue_counts(queue_ids: Sequence[int] | None = None, *, now: float | None = None) -> dict[int, QueueCounts]:
    """Live counts per queue (of ``queue_ids``, or all): folded counters plus
    pending deltas, and the age of the oldest ready message."""
    now = time.time() if now is None else now
    if queue_ids is not None and not queue_ids:
        return {}
    sql = dialect()
    with connection.cursor() as cur:
        cur.execute(*sql.queue_counts(queue_ids))
        totals: dict[int, dict[str, int]] = {
            qid: {f: int(v or 0) for f, v in zip(COUNTER_FIELDS, values, strict=True)} for qid, *values in cur.fetchall()
        }
        cur.execute(*sql.oldest_ready(queue_ids))
        oldest = {qid: enq for qid, enq in cur.fetchall() if enq is not None}
    result = {}
    for qid, t in totals.items():
        enqueued = oldest.get(qid)
        result[qid] = QueueCounts(
            ready=t["ready"],
            delayed=t["delayed"],
            in_flight=t["in_flight"],
            dead=t["dead_state"] + t["dead_out"],
            oldest_ready_age=round(max(0.0, now - enqueued), 3) if enqueued is not None else None,
            totals=t,
        )
    return result


def fold_stats() -> int:
    """Fold pending counter deltas into ``QueueStats``; returns rows folded."""
    sql = dialect()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(*sql.take_deltas())
            rows = cur.fetchall()
        sums: dict[int, list[int]] = {}
        for qid, *values in rows:
            acc = sums.setdefault(qid, [0] * len(COUNTER_FIELDS))
            for i, v in enumerate(values):
                acc[i] += v
        # The deltas of a deleted queue are dropped with it.
        existing = set(QueueStats.objects.filter(queue_id__in=sums).values_list("queue_id", flat=True))
        with connection.cursor() as cur:
            for qid, values in sums.items():
                if qid in existing:
                    cur.execute(*sql.add_to_stats(qid, values))
    return len(rows)


def recount(queue: Queue) -> QueueCounts:
    """Rebuild a queue's depth counters from the messages themselves (an exact,
    scanning count: for repair, not for every request)."""
    with transaction.atomic():
        # Lock the stats row so no fold runs between our count and our write.
        stats = QueueStats.objects.select_for_update().get(queue=queue)
        fold_stats()
        stats.refresh_from_db()
        by_state = dict(count_by(Message.objects.filter(queue=queue), "state"))
        stats.ready = by_state.get(S.READY, 0)
        stats.delayed = by_state.get(S.DELAYED, 0)
        stats.in_flight = by_state.get(S.IN_FLIGHT, 0)
        stats.dead_state = by_state.get(S.DEAD, 0)
        stats.dead_out = Message.objects.filter(origin_queue=queue).count()
        stats.save()
    return queue_counts([queue.id])[queue.id]


def count_by(qs: Any, column: str) -> list[tuple[Any, int]]:
    """(value, rows) per value of ``column`` in ``qs``."""
    return [(row[column], row["n"]) for row in qs.values(column).annotate(n=Count("id")).order_by()]
