"""Maintenance: what the monitor runs each tick. Delayed messages come due,
expired leases return, dedup ids are forgotten, retention is enforced, and
(PostgreSQL with autovacuum off) the churning tables are vacuumed."""

from __future__ import annotations

import itertools
import logging
import time

from django.conf import settings
from django.db import connection, transaction

from .. import events
from ..backends import dialect
from ..backends.common import DEDUP_TABLE, DELTA_TABLE, MESSAGE_TABLE
from ..models import DedupKey, Message, Queue
from ..states import MessageState as S
from .claim import promote_due_in
from .counters import Tally
from .operator import delete_counted
from .queues import ready_ids
from .receipts import release_lapsed

log = logging.getLogger("queues.broker")

# Messages one tick of retention deletes from a queue at most, so one tick
# stays short; the rest go at the next.
RETENTION_BATCH = 10_000
RETENTION_CHUNK = 500
# Rows one sweep of expired leases takes at most, so one tick stays short.
SWEEP_BATCH = 1000
# Every message is inserted, claimed and deleted; counter deltas are
# inserted and folded away each second; dedup keys expire in bulk.
CHURNING_TABLES = [MESSAGE_TABLE, DELTA_TABLE, DEDUP_TABLE]


def promote_due(*, now: float | None = None) -> int:
    """Make every delayed message whose time has come ready (all queues)."""
    now = time.time() if now is None else now
    with transaction.atomic():
        tally = Tally()
        n = promote_due_in(tally, now)
        tally.save()
    return n


def expire_leases(*, now: float | None = None, limit: int = SWEEP_BATCH) -> int:
    """Return messages whose lease ran out to ready (a redelivery each), or
    dead-letter them when they used up their deliveries, in every queue.
    Returns how many. A receive does the same for its own queue (``claim``):
    this is for the queues nobody receives from (their dead-letter moves,
    counters and dashboard events)."""
    now = time.time() if now is None else now
    with transaction.atomic():
        return release_lapsed(now, limit=limit)


def prune_dedup(*, now: float | None = None) -> int:
    """Forget dedup ids older than the window."""
    now = time.time() if now is None else now
    deleted, _ = DedupKey.objects.filter(expires_at__lte=now).delete()
    return deleted


def enforce_retention(*, now: float | None = None) -> int:
    """Delete waiting messages older than their queue's ``retention``, as the
    queue's owner asked. Counted (``expired_total``) and announced."""
    now = time.time() if now is None else now
    removed = 0
    for queue in Queue.objects.filter(retention__isnull=False):
        assert queue.retention is not None
        with transaction.atomic():
            n = delete_counted(queue, _too_old(queue, now - queue.retention), "expired_total")
            if n:
                events.emit("retention", queue.name, count=n)
            removed += n
    return removed


def _too_old(queue: Queue, cutoff: float) -> list[int]:
    """The ids of the queue's waiting messages enqueued at or before
    ``cutoff``, at most RETENTION_BATCH. Ids are handed out in enqueue order,
    so each waiting state is walked up its ids through its own index, a
    chunk at a time, and the walk stops at the first message younger than
    the cutoff: no index on the enqueue time, which every send and every
    claim would write. Not one walk up the queue's ids (mq_msg_queue):
    that would first read every older message in flight."""
    old: list[int] = []
    for state in (S.READY, S.DELAYED, S.DEAD):
        after: int | None = None
        while len(old) < RETENTION_BATCH:
            wanted = min(RETENTION_CHUNK, RETENTION_BATCH - len(old))
            chunk = _waiting_chunk(queue, state, after, wanted)
            kept = [mid for mid, enqueued_at in itertools.takewhile(lambda row: row[1] <= cutoff, chunk)]
            old += kept
            if len(kept) < wanted:  # a young one, or the state's last
                break
            after = kept[-1]
    return sorted(old)


def _waiting_chunk(queue: Queue, state: S, after: int | None, limit: int) -> list[tuple[int, float]]:
    """Up to ``limit`` (id, enqueue time) of the queue's messages in
    ``state``, by id, past ``after``: ready ones through the claim's index
    (``ready_ids``), the others through mq_msg_state."""
    if state == S.READY:
        ids = ready_ids(queue.id, after=after, limit=limit)
        return sorted(Message.objects.filter(id__in=ids).values_list("id", "enqueued_at"))
    rows = Message.objects.filter(queue=queue, state=state)
    if after is not None:
        rows = rows.filter(id__gt=after)
    return list(rows.order_by("id").values_list("id", "enqueued_at")[:limit])


class Vacuum:
    """PostgreSQL with autovacuum off (server-wide, or for one of our
    tables): VACUUM each churning table that autovacuum would have vacuumed
    by now, as it would. Without it a busy queue's dead rows pile up and
    every claim wades through them (a one-message round trip took three
    times as long after a few hundred thousand messages had passed).
    ``MQ_VACUUM=off`` leaves vacuuming to the operator.

    A table is not vacuumed again for ``REST_FACTOR`` times as long as its
    last vacuum took: at most a tenth of the time goes to vacuuming it. Dead
    rows that an open transaction still holds cannot be reclaimed, and
    without a rest each check would scan the table and its indexes again for
    nothing."""

    REST_FACTOR = 9.0

    def __init__(self) -> None:
        self.rests_until: dict[str, float] = {}  # table -> time.monotonic()

    def __call__(self) -> list[str]:
        """Vacuum what is due; returns the tables vacuumed. Must run outside
        a transaction (the monitor's vacuum thread)."""
        unvacuumed = dialect().unvacuumed(CHURNING_TABLES)
        if not settings.MQ_VACUUM or unvacuumed is None or connection.in_atomic_block:
            return []
        with connection.cursor() as cur:
            cur.execute(*unvacuumed)
            due = [name for (name,) in cur.fetchall() if self.rests_until.get(name, 0.0) <= time.monotonic()]
            for name in due:
                started = time.monotonic()
                cur.execute(f"VACUUM (ANALYZE) {connection.ops.quote_name(name)}")
                took = time.monotonic() - started
                self.rests_until[name] = time.monotonic() + self.REST_FACTOR * took
                log.info("autovacuum is off: vacuumed %s in %.0f ms", name, took * 1000)
        return due


# The monitor's vacuum thread's alone.
vacuum_unvacuumed = Vacuum()
