"""Every multi-row operation on queues and messages.

Views, admin actions, commands and the monitor call these functions; nothing
else writes messages. Each public function runs in one transaction, keeps the
queue counters exact (by appending a delta in the same transaction), announces
events after commit, and wakes long-polling receivers when messages become
ready. Each has an ``a``-prefixed async twin for async views.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models.signals import post_delete, post_save

from . import events, notify
from .backends import NOTIFY_CHANNEL, dialect, placeholders, prepared_cursor
from .exceptions import (
    ConsumerDead,
    ConsumerNotFound,
    InvalidValue,
    MessageTooLarge,
    QueueExists,
    QueueFull,
    QueueInUse,
    QueueNotFound,
)
from .hashing import owned_clause
from .models import (
    COUNTER_FIELDS,
    Consumer,
    ConsumerStatus,
    Message,
    Queue,
    QueueCounts,
    QueueStats,
    QueueStatsDelta,
    epoch_to_iso,
)
from .states import MessageState as S

log = logging.getLogger(__name__)
MESSAGE_TABLE = Message._meta.db_table
DEDUP_TABLE = "queues_dedupkey"
DELTA_TABLE = QueueStatsDelta._meta.db_table
CONSUMER_TABLE = Consumer._meta.db_table
# Start of every statement that writes counter deltas (rows follow).
DELTA_INSERT_INTO = f"INSERT INTO {DELTA_TABLE} (queue_id, {', '.join(COUNTER_FIELDS)})"

# Rows one sweep of expired leases takes at most, so one tick stays short.
SWEEP_BATCH = 1000
MAX_RECEIVE = 100

STATE_COUNTER = {S.READY: "ready", S.DELAYED: "delayed", S.IN_FLIGHT: "in_flight", S.DEAD: "dead_state"}


# --------------------------------------------------------------------------- #
# Counters
# --------------------------------------------------------------------------- #


class Tally:
    """Counter changes made by one transaction, saved as one delta row per queue."""

    def __init__(self) -> None:
        self.deltas: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.ready_queues: set[int] = set()

    def add(self, queue_id: int, counter: str, n: int = 1) -> None:
        if n:
            self.deltas[queue_id][counter] += n

    def move(self, queue_id: int, source: str | None, target: str | None, n: int = 1) -> None:
        if source is not None:
            self.add(queue_id, STATE_COUNTER[S(source)], -n)
        if target is not None:
            self.add(queue_id, STATE_COUNTER[S(target)], n)
            if target == S.READY:
                self.ready_queues.add(queue_id)

    def statements(self) -> tuple[str, str, list[Any]]:
        """The delta INSERT and (PostgreSQL) the NOTIFY this tally needs, each
        "" when not needed, and their parameters in that order."""
        rows = [
            (qid, *(d.get(f, 0) for f in COUNTER_FIELDS))
            for qid, d in self.deltas.items()
            if any(d.values())
        ]
        insert, notify_sql = "", ""
        params: list[Any] = []
        if rows:
            values = ", ".join([f"({placeholders(len(rows[0]))})"] * len(rows))
            insert = f"{DELTA_INSERT_INTO} VALUES {values}"
            params += [value for row in rows for value in row]
        if self.ready_queues and dialect().postgres:
            # Delivered at commit to every process's listener.
            notify_sql = "pg_notify(%s, %s)"
            params += [NOTIFY_CHANNEL, ",".join(map(str, sorted(self.ready_queues)))]
        return insert, notify_sql, params

    def save(self) -> None:
        """Write the deltas and arrange wake-ups; call inside the transaction.
        One statement: the delta rows, and on PostgreSQL the NOTIFY with them."""
        insert, notify_sql, params = self.statements()
        if insert and notify_sql:
            # One round trip: a data-modifying WITH always runs.
            sql = f"WITH d AS ({insert}) SELECT {notify_sql}"
        else:
            sql = insert or (f"SELECT {notify_sql}" if notify_sql else "")
        if sql:
            with connection.cursor() as cur:
                cur.execute(sql, params)
        self.wake_at_commit()

    def wake_at_commit(self) -> None:
        if self.ready_queues:
            ready = sorted(self.ready_queues)
            # Same process: wake at once, without a round trip through the server.
            transaction.on_commit(lambda: notify.wake(ready))


def queue_counts(queue_ids: Sequence[int] | None = None, *, now: float | None = None) -> dict[int, QueueCounts]:
    """Live counts per queue: folded counters plus pending deltas, and the age
    of the oldest ready message. Costs a few indexed queries whatever the
    number of stored messages."""
    now = time.time() if now is None else now
    # Folded counters and pending deltas in ONE statement, so one snapshot:
    # read in two, a fold committing between them would move deltas out of
    # the second read after the first had missed them, and counts would
    # briefly go backwards.
    # Only the pending deltas (a few per queue) are summed; the folded rows
    # pass through. Summing all of them (UNION ALL, GROUP BY) cost 7 ms at
    # 1,000 queues, much of it making and reading NUMERIC sums. A queue's
    # stats row is created with it; deltas of a deleted queue are dropped.
    where, params = "", []
    if queue_ids is not None:
        if not queue_ids:
            return {}
        where = f" WHERE queue_id IN ({placeholders(len(queue_ids))})"
        params = list(queue_ids)
    sums = ", ".join(f"CAST(SUM({f}) AS BIGINT) AS {f}" for f in COUNTER_FIELDS)
    sql = (
        f"SELECT s.queue_id, {', '.join(f's.{f} + COALESCE(d.{f}, 0)' for f in COUNTER_FIELDS)} "
        f"FROM {QueueStats._meta.db_table} s LEFT JOIN ("
        f"SELECT queue_id, {sums} FROM {DELTA_TABLE}{where} GROUP BY queue_id) d ON d.queue_id = s.queue_id"
        + where.replace("queue_id", "s.queue_id")
    )
    with connection.cursor() as cur:
        cur.execute(sql, params * 2)
        totals: dict[int, dict[str, int]] = {
            qid: {f: int(v or 0) for f, v in zip(COUNTER_FIELDS, values, strict=True)}
            for qid, *values in cur.fetchall()
        }
    oldest = _oldest_ready(None if queue_ids is None else list(queue_ids))
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


def _oldest_ready(queue_ids: list[int] | None) -> dict[int, float]:
    """Enqueue time of the oldest ready message per queue (of ``queue_ids``,
    or of every queue: no list of a thousand ids to quote and plan)."""
    if queue_ids is not None and not queue_ids:
        return {}
    # One correlated, index-served lookup per queue (mq_msg_state), in one
    # statement: the oldest ready row is the lowest id among ready rows.
    # The state is matched as a range and the order names it, so only
    # mq_msg_state serves the order: with "state = 'ready' ORDER BY id"
    # PostgreSQL may walk the primary key instead, which for an empty queue
    # beside a big one reads the whole table (20 s at 1,000 queues).
    sql = (
        f"SELECT q.id, (SELECT m.enqueued_at FROM {MESSAGE_TABLE} m WHERE m.queue_id = q.id "
        f"AND m.state >= 'ready' AND m.state <= 'ready' ORDER BY m.state, m.id LIMIT 1) "
        f"FROM {Queue._meta.db_table} q"
        + ("" if queue_ids is None else f" WHERE q.id IN ({placeholders(len(queue_ids))})")
    )
    with connection.cursor() as cur:
        cur.execute(sql, queue_ids or [])
        return {qid: enq for qid, enq in cur.fetchall() if enq is not None}


def fold_stats() -> int:
    """Fold pending counter deltas into ``QueueStats``; returns rows folded."""
    fields = ", ".join(COUNTER_FIELDS)
    with transaction.atomic():
        with connection.cursor() as cur:
            # Only rows visible to this statement are deleted and summed, so a
            # delta committed meanwhile stays for the next fold: none is lost
            # or counted twice.
            cur.execute(f"DELETE FROM {DELTA_TABLE} RETURNING queue_id, {fields}")
            rows = cur.fetchall()
        sums: dict[int, list[int]] = {}
        for qid, *values in rows:
            acc = sums.setdefault(qid, [0] * len(COUNTER_FIELDS))
            for i, v in enumerate(values):
                acc[i] += v
        existing = set(QueueStats.objects.filter(queue_id__in=sums).values_list("queue_id", flat=True))
        sets = ", ".join(f"{f} = {f} + %s" for f in COUNTER_FIELDS)
        with connection.cursor() as cur:
            for qid, values in sums.items():
                if qid in existing:
                    cur.execute(f"UPDATE {QueueStats._meta.db_table} SET {sets} WHERE queue_id = %s", [*values, qid])
    return len(rows)


def recount(queue: Queue) -> QueueCounts:
    """Rebuild a queue's depth counters from the messages themselves (an exact,
    scanning count: for repair, not for every request)."""
    with transaction.atomic():
        # Lock the stats row so no fold runs between our count and our write.
        stats = QueueStats.objects.select_for_update().get(queue=queue)
        fold_stats()
        stats.refresh_from_db()
        by_state = dict(_count_by(Message.objects.filter(queue=queue), "state"))
        stats.ready = by_state.get(S.READY, 0)
        stats.delayed = by_state.get(S.DELAYED, 0)
        stats.in_flight = by_state.get(S.IN_FLIGHT, 0)
        stats.dead_state = by_state.get(S.DEAD, 0)
        stats.dead_out = Message.objects.filter(origin_queue=queue).count()
        stats.save()
    return queue_counts([queue.id])[queue.id]


# --------------------------------------------------------------------------- #
# Queues
# --------------------------------------------------------------------------- #

QUEUE_FIELDS = (
    "visibility_timeout",
    "max_deliveries",
    "dead_letter_queue",
    "retention",
    "delay",
    "fifo",
    "paused",
    "max_message_bytes",
    "max_depth",
)


_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")
_RECEIPT = re.compile(r"(\d{1,18})\.([0-9a-f]{32})")


# Queue lookups by name are cached per process: every API call starts with
# one, and its ORM query cost more than the work of a receive. Any save or
# delete of a queue in this process forgets them all at once (and again at
# commit); other processes see a change within QUEUE_CACHE_SECONDS.
QUEUE_CACHE_SECONDS = 1.0
_queue_cache: dict[str, tuple[float, Queue]] = {}


def forget_queues(**_: Any) -> None:
    """Drop every cached queue lookup (a signal receiver, too)."""
    _queue_cache.clear()
    if connection.in_atomic_block:
        transaction.on_commit(_queue_cache.clear)


post_save.connect(forget_queues, sender=Queue, dispatch_uid="mq-forget-queues-save")
post_delete.connect(forget_queues, sender=Queue, dispatch_uid="mq-forget-queues-delete")


def get_queue(name: str) -> Queue:
    """The queue called ``name``; raises QueueNotFound."""
    now = time.monotonic()
    hit = _queue_cache.get(name)
    if hit is not None and hit[0] > now:
        return copy.copy(hit[1])  # callers may change their copy
    if not _QUEUE_NAME.fullmatch(name):
        raise QueueNotFound(f"No queue named {name[:100]!r} (names are 1-80 of A-Z a-z 0-9 _ . -).")
    try:
        queue = Queue.objects.select_related("dead_letter_queue").get(name=name)
    except Queue.DoesNotExist:
        raise QueueNotFound(f"No queue named {name!r}.") from None
    _queue_cache[name] = (now + QUEUE_CACHE_SECONDS, copy.copy(queue))
    return queue


def put_queue(name: str, config: dict[str, Any], *, create_only: bool = False) -> tuple[Queue, bool]:
    """Create the queue or update the given settings. Returns (queue, created).
    Raises QueueExists with ``create_only``, InvalidValue for a bad setting."""
    unknown = set(config) - set(QUEUE_FIELDS)
    if unknown:
        raise InvalidValue(f"Unknown queue setting {sorted(unknown)[0]!r}.")
    values = dict(config)
    if "dead_letter_queue" in values and values["dead_letter_queue"] is not None:
        dlq_name = values["dead_letter_queue"]
        if dlq_name == name:
            raise InvalidValue("A queue cannot be its own dead-letter queue.")
        try:
            values["dead_letter_queue"] = Queue.objects.get(name=dlq_name)
        except Queue.DoesNotExist:
            raise InvalidValue(f"Dead-letter queue {dlq_name!r} does not exist; create it first.") from None
    with transaction.atomic():
        queue = Queue.objects.select_for_update().filter(name=name).first()
        created = queue is None
        if queue is None:
            queue = Queue(name=name)
        elif create_only:
            raise QueueExists(f"Queue {name!r} already exists.")
        for key, value in values.items():
            setattr(queue, key, value)
        try:
            queue.full_clean()
        except ValidationError as exc:
            # A domain error, so every caller (API, mq command, admin) reports it plainly.
            field, messages = next(iter(exc.message_dict.items()))
            raise InvalidValue(f"{field}: {messages[0]}") from None
        queue.save()
        if created:
            QueueStats.objects.create(queue=queue)
        elif values.get("paused") is False:
            tally = Tally()
            tally.ready_queues.add(queue.id)
            tally.save()
    return queue, created


def list_queues(names: Iterable[str] | None = None) -> list[tuple[Queue, QueueCounts]]:
    qs = Queue.objects.select_related("dead_letter_queue").order_by("name")
    if names is not None:
        qs = qs.filter(name__in=list(names))
    queues = list(qs)
    counts = queue_counts([q.id for q in queues])
    return [(q, counts.get(q.id, QueueCounts())) for q in queues]


def delete_queue(queue: Queue) -> None:
    """Delete a queue and every message in it. Raises QueueInUse when other
    queues dead-letter into it."""
    with transaction.atomic():
        users = list(Queue.objects.filter(dead_letter_queue=queue).values_list("name", flat=True))
        if users:
            raise QueueInUse(f"Queue {queue.name!r} is the dead-letter queue of {', '.join(users)}.")
        # Messages that were dead-lettered into it leave their origin's count.
        tally = Tally()
        for origin_id, n in _count_by(Message.objects.filter(queue=queue, origin_queue__isnull=False), "origin_queue_id"):
            tally.add(origin_id, "dead_out", -n)
        tally.deltas.pop(queue.id, None)
        tally.save()
        Message.objects.filter(queue=queue).delete()
        queue.delete()
        events.emit("queue_deleted", queue.name)


def _count_by(qs: Any, column: str) -> list[tuple[Any, int]]:
    from django.db.models import Count

    return [(row[column], row["n"]) for row in qs.values(column).annotate(n=Count("id")).order_by()]


# --------------------------------------------------------------------------- #
# Publish
# --------------------------------------------------------------------------- #


@dataclass
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


def publish(queue: Queue, messages: Sequence[NewMessage], *, now: float | None = None) -> list[Published]:
    """Enqueue a batch, all or nothing (see ``_publish``). A queue deleted by
    another process since this one cached it is QueueNotFound, not a 500."""
    try:
        return _publish(queue, messages, now=now)
    except IntegrityError:
        if connection.in_atomic_block or Queue.objects.filter(pk=queue.pk).exists():
            raise
        forget_queues()
        raise QueueNotFound(f"No queue named {queue.name!r}.") from None


def _publish(queue: Queue, messages: Sequence[NewMessage], *, now: float | None = None) -> list[Published]:
    """Enqueue a batch, all or nothing. Returns one result per input, in order.

    Raises MessageTooLarge, QueueFull (when ``max_depth`` would be exceeded).
    A ``dedup_id`` seen on this queue within the dedup window returns the
    first message's id as a duplicate and enqueues nothing for it.
    """
    now = time.time() if now is None else now
    for i, m in enumerate(messages):
        if len(m.body) > queue.max_message_bytes:
            raise MessageTooLarge(
                f"Message {i} body is {len(m.body)} bytes; queue {queue.name!r} accepts at most "
                f"{queue.max_message_bytes}."
            )
    if queue.max_depth is not None:
        c = queue_counts([queue.id], now=now).get(queue.id, QueueCounts())
        waiting = c.ready + c.delayed + c.in_flight
        if waiting + len(messages) > queue.max_depth:
            raise QueueFull(
                f"Queue {queue.name!r} holds {waiting} of at most {queue.max_depth} messages.",
                retry_after=1,
            )
    first_of: dict[str, int] = {}  # dedup id -> index of its first use in this batch
    for i, m in enumerate(messages):
        if m.dedup_id is not None and m.dedup_id not in first_of:
            first_of[m.dedup_id] = i
    if not first_of and dialect().postgres:
        # The common case: no dedup ids. Messages, counters and the NOTIFY
        # in ONE statement, atomic on its own: one round trip, no BEGIN.
        new_rows = [new_row(queue, m, now) for m in messages]
        with Handing(queue, now) as handing:
            handing.lease(new_rows)
            tally = sent_tally(queue, new_rows)
            ids = _insert_messages(new_rows, tally)
            handing.inserted(ids)
        tally.wake_at_commit()
        return [Published(str(pk), False) for pk in ids]
    window = settings.MQ_DEDUP_WINDOW_SECONDS
    results: list[Published | None] = [None] * len(messages)
    with Handing(queue, now) as handing, transaction.atomic():
        fresh_keys: set[str] = set()
        if first_of:
            fresh_keys = _claim_dedup_keys(queue.id, list(first_of), now, now + window)
            taken = {k: v for k, v in first_of.items() if k not in fresh_keys}
            if taken:
                seen = dict(_dedup_message_ids(queue.id, list(taken)))
                for key, i in taken.items():
                    results[i] = Published(str(seen.get(key) or ""), True)
        rows: list[tuple[Any, ...]] = []
        row_index: list[int] = []
        for i, m in enumerate(messages):
            if results[i] is not None:
                continue
            if m.dedup_id is not None and first_of[m.dedup_id] != i:
                continue  # a repeat within the batch: resolved below
            rows.append(new_row(queue, m, now))
            row_index.append(i)
        handing.lease(rows)
        ids = _insert_messages(rows)
        handing.inserted(ids)
        for i, pk in zip(row_index, ids, strict=True):
            results[i] = Published(str(pk), False)
        bind = {
            dedup: pk
            for i, pk in zip(row_index, ids, strict=True)
            if (dedup := messages[i].dedup_id) is not None and dedup in fresh_keys
        }
        _bind_dedup_keys(queue.id, bind)
        for i, m in enumerate(messages):
            if results[i] is None:  # repeat of a dedup id earlier in this batch
                first = results[first_of[m.dedup_id]]  # type: ignore[index]
                assert first is not None
                results[i] = Published(first.id, True)
        sent_tally(queue, rows).save()
    return [r for r in results if r is not None]


# The columns a new message is written with (the lease, consumer, origin and
# dead_at start out NULL), and their PostgreSQL array types for unnest.
NEW_MESSAGE_COLUMNS = (
    ("queue_id", "bigint"),
    ("state", "varchar"),
    ("priority", "smallint"),
    ("body", "text"),
    ("headers", "text"),
    ("group_key", "varchar"),
    ("dedup_id", "varchar"),
    ("delivery_count", "integer"),
    ("enqueued_at", "float8"),
    ("visible_at", "float8"),
    ("last_error", "text"),
    # Set only for a message handed to a waiting receive (``Handing``).
    ("lease_token", "varchar"),
    ("lease_expires_at", "float8"),
    ("consumer_id", "varchar"),
)
_STATE, _PRIORITY, _BODY, _HEADERS, _GROUP, _DELIVERIES, _ENQUEUED = 1, 2, 3, 4, 5, 7, 8
_TOKEN, _EXPIRES = 11, 12
_LEASE = slice(_TOKEN, None)  # token, expiry, consumer


def new_row(queue: Queue, m: NewMessage, now: float) -> tuple[Any, ...]:
    """A message's values in NEW_MESSAGE_COLUMNS order."""
    delay = queue.delay if m.delay is None else m.delay
    state = _DELAYED if delay > 0 else _READY
    headers = orjson.dumps(m.headers).decode() if m.headers else "{}"
    return (queue.id, state, m.priority, m.body.decode(), headers, m.group or "", m.dedup_id, 0, now, now + delay, "", None, None, None)


_READY, _DELAYED = S.READY.value, S.DELAYED.value


def sent_tally(queue: Queue, rows: list[tuple[Any, ...]]) -> Tally:
    tally = Tally()
    states = Counter(row[_STATE] for row in rows)
    for state, n in states.items():
        tally.move(queue.id, None, state, n)
    tally.add(queue.id, "sent_total", len(rows))
    tally.add(queue.id, "received_total", states[S.IN_FLIGHT.value])
    return tally


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
        self.rows: list[tuple[Any, ...]] = []
        self.ids: list[int] = []

    def lease(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        if not self.eligible:
            return
        ready = [i for i, row in enumerate(rows) if row[_STATE] == S.READY]
        if not ready:
            return
        waiters = _to_live_consumers(notify.take(self.queue.id, len(ready)))
        # As a claim takes them: highest priority first, then oldest.
        ready.sort(key=lambda i: (-rows[i][_PRIORITY], i))
        for w in waiters:
            assert w.offer is not None
            mine, ready = ready[: w.offer.max_messages], ready[w.offer.max_messages :]
            self.given.append((w, mine))
            vt = self.queue.visibility_timeout if w.offer.visibility_timeout is None else w.offer.visibility_timeout
            for i in mine:
                row = list(rows[i])
                row[_STATE], row[_DELIVERIES] = S.IN_FLIGHT.value, 1
                row[_LEASE] = [secrets.token_hex(16), self.now + vt, w.offer.consumer_id]
                rows[i] = tuple(row)

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
                r = self.rows[i]
                out.append(Delivery(self.ids[i], r[_BODY], r[_HEADERS], r[_PRIORITY], r[_GROUP], 1, r[_ENQUEUED], r[_TOKEN], r[_EXPIRES]))
            out.sort(key=lambda d: (-d.priority, d.id))
            notify.hand(w, out)


def _to_live_consumers(waiters: list[notify.Waiter]) -> list[notify.Waiter]:
    """The taken waiters whose consumer (if they name one) is not dead; the
    others are told to look again, where their claim finds the consumer dead
    and takes nothing. A receive checks its consumer before it waits and
    each claim checks it again (``claim_statement``): without this, a
    consumer declared dead while its stream stayed open was still handed new
    messages, each taken back by the monitor's sweep and delivered again.
    A consumer declared dead between this check and the commit is the
    monitor's straggler sweep's (health.STRAGGLER_WINDOW_SECONDS), as for a
    claim."""
    named = {w.offer.consumer_id for w in waiters if w.offer is not None and w.offer.consumer_id is not None}
    if not named:
        return waiters
    with connection.cursor() as cur:
        cur.execute(f"SELECT id FROM {CONSUMER_TABLE} WHERE id IN ({placeholders(len(named))}) AND status <> 'dead'", list(named))
        alive = {row[0] for row in cur.fetchall()}
    live = []
    for w in waiters:
        assert w.offer is not None
        if w.offer.consumer_id is None or w.offer.consumer_id in alive:
            live.append(w)
        else:
            notify.hand(w, True)
    return live


def json_rows(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """PostgreSQL: a SELECT of ``rows`` as typed ``columns`` (name, SQL type),
    in order, passed as ONE parameter: a JSON array of arrays.

    psycopg quotes an array parameter element by element in Python (client
    side binding, as Django uses it): 2.4 ms for a batch of 100 messages,
    more than the INSERT itself. orjson writes the same rows in 0.1 ms, and
    the server parses them once (jsonb: ``json`` would parse each element
    again for every column it reads, 10 times slower)."""
    values = ", ".join(f"(e->>{i})::{kind} AS {name}" for i, (name, kind) in enumerate(columns))
    return f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS e", [orjson.dumps(rows).decode()]


def insert_statement(rows: list[tuple[Any, ...]], tally: Tally | None = None) -> tuple[str, list[Any]]:
    """One INSERT of a batch of rows (NEW_MESSAGE_COLUMNS order) and its
    parameters. PostgreSQL gets the rows as one JSON parameter
    (``json_rows``), SQLite a VALUES list. With ``tally``
    (PostgreSQL) the statement also writes its counter deltas and NOTIFY, and
    returns one row: the array of new ids; else one row per id."""
    names = ", ".join(name for name, _ in NEW_MESSAGE_COLUMNS)
    if dialect().postgres:
        rows_sql, params = json_rows(NEW_MESSAGE_COLUMNS, rows)
        sql = f"INSERT INTO {MESSAGE_TABLE} ({names}) {rows_sql} RETURNING id"
        if tally is not None:
            delta, notify_sql, tally_params = tally.statements()
            ctes = f"ins AS ({sql})" + (f", d AS ({delta})" if delta else "")
            # One output row: the ids, and the NOTIFY called once.
            sql = f"WITH {ctes} SELECT array_agg(id){', ' + notify_sql if notify_sql else ''} FROM ins"
            params += tally_params
        return sql, params
    if tally is not None:
        raise ValueError("a tally rides along only on PostgreSQL")
    row_sql = f"({placeholders(len(NEW_MESSAGE_COLUMNS))})"
    sql = f"INSERT INTO {MESSAGE_TABLE} ({names}) VALUES {', '.join([row_sql] * len(rows))} RETURNING id"
    return sql, [value for row in rows for value in row]


def _insert_messages(rows: list[tuple[Any, ...]], tally: Tally | None = None) -> list[int]:
    """Insert a batch in one statement (``insert_statement``); returns the new
    ids in row order. Half the cost of ``bulk_create``, which builds and reads
    back a model instance per row. Ids come from one sequence inside one
    statement, so they ascend in row order: sorting them pairs them with
    their rows."""
    if not rows:
        return []
    with prepared_cursor() as cur:
        cur.execute(*insert_statement(rows, tally))
        fetched = cur.fetchall()
    ids = sorted(fetched[0][0] or []) if tally is not None else sorted(r[0] for r in fetched)
    if len(ids) != len(rows):
        raise AssertionError(f"inserted {len(rows)} messages, got {len(ids)} ids back")
    return ids


def _claim_dedup_keys(queue_id: int, keys: list[str], now: float, expires_at: float) -> set[str]:
    """Insert dedup keys; returns those this transaction now owns (new, or
    expired and taken over). A key inserted by a concurrent transaction makes
    this statement wait for it to commit, then counts as taken."""
    values = ", ".join(["(%s, %s, NULL, %s)"] * len(keys))
    params: list[Any] = []
    for key in keys:
        params += [queue_id, key, expires_at]
    sql = (
        f"INSERT INTO {DEDUP_TABLE} (queue_id, dedup_id, message_id, expires_at) VALUES {values} "
        f"ON CONFLICT (queue_id, dedup_id) DO UPDATE SET message_id = NULL, expires_at = excluded.expires_at "
        f"WHERE {DEDUP_TABLE}.expires_at <= %s RETURNING dedup_id"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*params, now])
        return {row[0] for row in cur.fetchall()}


def _dedup_message_ids(queue_id: int, keys: list[str]) -> list[tuple[str, int | None]]:
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT dedup_id, message_id FROM {DEDUP_TABLE} WHERE queue_id = %s AND dedup_id IN ({placeholders(len(keys))})",
            [queue_id, *keys],
        )
        return cur.fetchall()


def _bind_dedup_keys(queue_id: int, ids: dict[str, int]) -> None:
    if not ids:
        return
    cases = " ".join(["WHEN %s THEN %s"] * len(ids))
    params: list[Any] = []
    for key, mid in ids.items():
        params += [key, mid]
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE {DEDUP_TABLE} SET message_id = CASE dedup_id {cases} END "
            f"WHERE queue_id = %s AND dedup_id IN ({placeholders(len(ids))})",
            [*params, queue_id, *ids],
        )


# --------------------------------------------------------------------------- #
# Receive
# --------------------------------------------------------------------------- #


class Delivery(NamedTuple):
    """A message leased to a receive. A named tuple, not a frozen dataclass:
    a claim builds up to 100 of them, and a frozen dataclass's __init__ cost
    0.9 us each against 0.2."""

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


# A ready message is claimable when it is not in a FIFO group, or when it is
# its group's head: no other message of the group is in flight and none older
# is still waiting. So a group has at most one message in flight, in order.
FIFO_HEAD = (
    f"(m.group_key = '' OR NOT EXISTS (SELECT 1 FROM {MESSAGE_TABLE} g WHERE g.queue_id = m.queue_id "
    "AND g.group_key = m.group_key AND g.id <> m.id AND (g.state = 'in_flight' "
    "OR (g.id < m.id AND g.state IN ('ready', 'delayed')))))"
)


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
    return _receive(queue, max_messages, visibility_timeout, consumer_id, now)[0]


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
    statement: the acks' delete rides in the claim's WITH, so the round costs
    one commit, not two (a one-message round trip went from 1.75 to 1.17 ms
    over psycopg). The claim skips the messages the acks delete: a message
    whose lease expired while it stayed ready still takes its ack (as SQS),
    and is not handed out again. A FIFO queue acks first and claims after,
    in two statements: the claim must see the ack, or a group whose message
    was just acked would look busy."""
    parsed = parse_receipts(receipts)
    if parsed and dialect().postgres and not queue.paused and not queue.fifo:
        deliveries, found = _receive(queue, max_messages, visibility_timeout, consumer_id, now, acks=parsed)
        return deliveries, match_receipts(parsed, found)
    acked = ack(queue, receipts) if parsed else ReceiptResult()
    return _receive(queue, max_messages, visibility_timeout, consumer_id, now)[0], acked


def _receive(
    queue: Queue,
    max_messages: int,
    visibility_timeout: int | None,
    consumer_id: str | None,
    now: float | None,
    *,
    acks: list[tuple[int, str, str]] | None = None,
) -> tuple[list[Delivery], list[tuple[int, str]]]:
    """``receive``; with ``acks`` (PostgreSQL, not FIFO, not paused) the same
    statement acks them first. Returns the deliveries and (id, lease token)
    of each message acked."""
    if queue.paused:
        return [], []
    now = time.time() if now is None else now
    vt = queue.visibility_timeout if visibility_timeout is None else visibility_timeout
    d = dialect()
    expires = now + vt
    acked: list[tuple[int, str]] = []
    if d.postgres and not queue.fifo:
        # One statement, atomic on its own with its counter deltas: due
        # delayed messages become ready, and ready ones are claimed. No
        # BEGIN/COMMIT round trips.
        with prepared_cursor() as cur:
            cur.execute(*receive_statement(queue, now, expires, max_messages, consumer_id, acks=acks))
            rows, promoted, acked = split_claim_rows(cur.fetchall())
            if promoted:
                # Rare: delayed messages came due. The statement's snapshot
                # did not see them ready; claim again for what is missing,
                # and tell other processes' waiting receives.
                _announce_ready(cur, queue.id)
                if len(rows) < max_messages:
                    cur.execute(*reclaim_statement(queue, max_messages - len(rows), expires, consumer_id))
                    rows += cur.fetchall()
    else:
        if acks is not None:
            raise ValueError("acks ride on a claim only on PostgreSQL, for a queue that is not FIFO")
        with transaction.atomic():
            tally = Tally()
            _promote_due(tally, now, queue_id=queue.id)
            with connection.cursor() as cur:
                cur.execute(*claim_statement(queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id))
                rows = cur.fetchall()
            if queue.fifo and len(rows) > 1:
                rows = _one_per_group(rows)
            if rows:
                tally.move(queue.id, S.READY, S.IN_FLIGHT, len(rows))
                tally.add(queue.id, "received_total", len(rows))
            tally.save()
    return to_deliveries(rows, expires), acked


def to_deliveries(rows: list[tuple[Any, ...]], expires: float) -> list[Delivery]:
    """A claim's rows as deliveries, in delivery order."""
    deliveries = [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], expires) for r in rows]
    deliveries.sort(key=lambda x: (-x.priority, x.id))
    return deliveries


def receive_statement(
    queue: Queue,
    now: float,
    expires: float,
    max_messages: int,
    consumer_id: str | None = None,
    *,
    acks: list[tuple[int, str, str]] | None = None,
) -> tuple[str, list[Any]]:
    """PostgreSQL, a queue that is not FIFO: a receive's one statement (the
    claim in ``promoting_claim_statement``), with ``acks`` riding on it."""
    claim, params = claim_statement(
        queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id, skip_acked=acks is not None
    )
    return promoting_claim_statement(queue.id, now, claim, params, acks=acks)


def claim_statement(
    queue: Queue, *, max_messages: int, expires: float, consumer_id: str | None = None, skip_acked: bool = False
) -> tuple[str, list[Any]]:
    """The UPDATE that leases up to ``max_messages`` ready messages of the
    queue (highest priority first, then oldest), and its parameters. With
    ``skip_acked`` (PostgreSQL, not FIFO) it leaves alone the messages that
    the statement's ``acked`` part deletes (``promoting_claim_statement``)."""
    d = dialect()
    head = f" AND {FIFO_HEAD}" if queue.fifo else ""
    # Consistent hashing: a live consumer claims only the groups it owns,
    # so a group sticks to one consumer while that consumer lives.
    owned, owned_params = owned_clause(queue.name, consumer_id) if queue.fifo and consumer_id else ("", [])
    # A consumer that left (or was declared dead) while this receive was
    # waiting claims nothing: its leases were just released and nobody
    # would release these. FOR SHARE orders us against the death sentence,
    # which updates the consumer row before releasing its leases.
    alive, alive_params = "", []
    if consumer_id is not None:
        alive = f"EXISTS (SELECT 1 FROM {CONSUMER_TABLE} c WHERE c.id = %s AND c.status <> 'dead'{d.for_share})"
        alive_params = [consumer_id]
    lease = (
        f"UPDATE {MESSAGE_TABLE} SET state = 'in_flight', delivery_count = delivery_count + 1, "
        f"lease_token = {d.random_token}, lease_expires_at = %s, consumer_id = %s "
    )
    returning = " RETURNING id, body, headers, priority, group_key, delivery_count, enqueued_at, lease_token"
    # SKIP LOCKED closes the race of two receivers claiming one row: each
    # takes rows nobody else holds, without waiting for other claimers.
    if d.postgres and not queue.fifo:
        # mq_ready_head (migration 0006): the same selection, planned so it
        # always walks the claim index, whatever the statistics say.
        conditions = [c for c in (alive, ACKS_FIRST if skip_acked else "") if c]
        gate = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        skip = NOT_ACKED if skip_acked else ""
        claim = f"{lease}WHERE id = ANY(ARRAY(SELECT mq_ready_head(%s, %s){gate})){skip}{returning}"
        return claim, [expires, consumer_id, queue.id, max_messages, *alive_params]
    claim = (
        f"{lease}WHERE id IN (SELECT m.id FROM {MESSAGE_TABLE} m WHERE m.queue_id = %s AND m.state = 'ready'"
        f"{head}{owned}{' AND ' + alive if alive else ''} ORDER BY m.priority DESC, m.id LIMIT %s{d.skip_locked}){returning}"
    )
    if skip_acked:
        raise ValueError("acks ride on a claim only on PostgreSQL, for a queue that is not FIFO")
    return claim, [expires, consumer_id, queue.id, *owned_params, *alive_params, max_messages]


# In a statement that acks and claims: a message the ack deletes is neither
# promoted nor claimed by it (one statement must not change a row twice).
NOT_ACKED = " AND id NOT IN (SELECT id FROM acked)"
# ...and the acks are done before the claim or the promotion locks a row. The
# parts of one statement run in no set order. A claim that took its rows
# first, then waited for a row its acks name (one a sweep gave to another
# consumer, whose claim locked it), could wait on that consumer while it
# waited on us: its acks naming a row we had just claimed. A deadlock, seen
# with consumers racing the lease sweep. Acks alone lock in id order, as any
# ack does, so they cannot deadlock with each other. A one-time filter on
# the ack's row count makes each part wait until the acks are done.
ACKS_FIRST = "(SELECT count(*) FROM acked) >= 0"


# A claim's counter delta: its rows went from ready to in flight.
CLAIM_COUNTERS = {"ready": "-count(*)", "in_flight": "count(*)", "received_total": "count(*)"}


def counted_claim_statement(queue_id: int, claim: str, params: list[Any]) -> tuple[str, list[Any]]:
    """PostgreSQL: the claim with its counter delta, one statement."""
    counted = _with_delta(claim, CLAIM_COUNTERS)
    return f"{counted} SELECT * FROM main", [*params, queue_id]


def reclaim_statement(queue: Queue, missing: int, expires: float, consumer_id: str | None) -> tuple[str, list[Any]]:
    """PostgreSQL: the second claim of a receive whose statement promoted
    due delayed messages (its snapshot did not see them ready)."""
    claim, params = claim_statement(queue, max_messages=missing, expires=expires, consumer_id=consumer_id)
    return counted_claim_statement(queue.id, claim, params)


def _one_per_group(rows: list[tuple]) -> list[tuple]:
    # The head test runs against the statement's snapshot, where every member
    # of a group is still ready, so the group's head is the only candidate;
    # this is a belt to those braces.
    seen: set[str] = set()
    out = []
    for r in sorted(rows, key=lambda r: r[0]):
        if r[4] and r[4] in seen:
            raise AssertionError("FIFO claim returned two messages of one group")
        seen.add(r[4])
        out.append(r)
    return out


def _with_delta(statement: str, counters: dict[str, str]) -> str:
    """``WITH main AS (statement), d AS (INSERT the counter delta computed
    from main's rows)``: the caller appends its SELECT from ``main`` and
    passes the queue id after the statement's own parameters. Data-modifying
    WITH parts always run, so the delta lands with the statement, atomically
    (PostgreSQL)."""
    return f"WITH {_main_and_delta(statement, counters)}"


def _main_and_delta(statement: str, counters: dict[str, str]) -> str:
    """``_with_delta``'s two WITH parts, for a statement that has others."""
    return f"main AS ({statement}), d AS ({_delta_from_main(counters)} HAVING count(*) > 0)"


def _delta_from_main(counters: dict[str, str], queue: str = "%s", source: str = "main") -> str:
    """INSERT one delta row per group of ``main``'s (or ``source``'s) rows:
    ``counters`` maps a counter to its SQL expression (the others are 0),
    ``queue`` is the queue id's expression (a parameter unless given)."""
    values = ", ".join(counters.get(f, "0") for f in COUNTER_FIELDS)
    return f"{DELTA_INSERT_INTO} SELECT {queue}, {values} FROM {source}"


def promoting_claim_statement(
    queue_id: int, now: float, claim: str, params: list[Any], *, acks: list[tuple[int, str, str]] | None = None
) -> tuple[str, list[Any]]:
    """PostgreSQL: one statement that makes the queue's due delayed messages
    ready and runs the claim, each with its counter delta. Its rows are the
    claimed messages, then, when messages came due, one row whose id is NULL
    and whose last column counts them. They are not among the claimed: one
    statement sees one snapshot, where they were still delayed. With
    ``acks`` (parsed receipts; the claim built with ``skip_acked``) the
    statement first acks them, as ``ack_statement``, and returns a row per
    acked message too; the promotion and the claim wait for the acks to be
    done (ACKS_FIRST). ``split_claim_rows`` tells the rows apart."""
    ack_part = ""
    ack_params: list[Any] = []
    if acks is not None:
        ack_sql, ack_params = _ack_parts(queue_id, acks, "acked")
        ack_part = f"{ack_sql}, "
    promote = _promote_sql(one_queue=True, after_acks=acks is not None)
    promoted_delta = _delta_from_main({"delayed": "-count(*)", "ready": "count(*)"}, source="promoted")
    claimed = _main_and_delta(claim, CLAIM_COUNTERS)
    sql = (
        f"WITH {ack_part}promoted AS ({promote}), pd AS ({promoted_delta} HAVING count(*) > 0), {claimed} "
        f"SELECT *, 0 FROM main UNION ALL "
        f"SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*) FROM promoted HAVING count(*) > 0"
    )
    if acks is not None:
        sql += f" UNION ALL SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, lease_token, {_ACKED_ROW} FROM acked"
    return sql, [*ack_params, now, queue_id, queue_id, *params, queue_id]


_ACKED_ROW = -1  # the last column of an acked message's row


def split_claim_rows(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int, list[tuple[int, str]]]:
    """A ``promoting_claim_statement``'s rows: the claimed ones (without the
    last column), how many delayed messages became ready, and (id, lease
    token) of each acked message."""
    claimed, promoted, acked = [], 0, []
    for r in rows:
        if r[0] is None:
            promoted += r[-1]
        elif r[-1] == _ACKED_ROW:
            acked.append((r[0], r[7]))
        else:
            claimed.append(r[:-1])
    return claimed, promoted, acked


def announce_statement(queue_id: int) -> tuple[str, list[Any]]:
    """PostgreSQL: tell other processes' waiting receives that messages of
    this queue became ready outside a send."""
    return "SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, str(queue_id)]


def _announce_ready(cur: Any, queue_id: int) -> None:
    """Messages of this queue became ready outside a send: wake the receives
    waiting on it, in this process at once, in others by NOTIFY."""
    cur.execute(*announce_statement(queue_id))
    transaction.on_commit(lambda: notify.wake([queue_id]))


def _promote_sql(*, one_queue: bool, after_acks: bool = False) -> str:
    """Due delayed messages (of one queue: a second parameter) become ready,
    locked in id order; returns their queue ids. Parameters: now[, queue id].
    ``after_acks``: in a statement with an ``acked`` part, once it is done,
    and not its rows."""
    where = "state = 'delayed' AND visible_at <= %s" + (" AND queue_id = %s" if one_queue else "")
    if after_acks:
        where += f" AND {ACKS_FIRST}"
    skip = NOT_ACKED if after_acks else ""
    return f"UPDATE {MESSAGE_TABLE} SET state = 'ready' WHERE {_locked_in_id_order(where)}{skip} RETURNING queue_id"


def _promote_due(tally: Tally, now: float, *, queue_id: int | None = None) -> int:
    """Delayed messages whose time has come become ready."""
    params: list[Any] = [now] if queue_id is None else [now, queue_id]
    with connection.cursor() as cur:
        cur.execute(_promote_sql(one_queue=queue_id is not None), params)
        rows = cur.fetchall()
    per_queue: dict[int, int] = defaultdict(int)
    for (qid,) in rows:
        per_queue[qid] += 1
    for qid, n in per_queue.items():
        tally.move(qid, S.DELAYED, S.READY, n)
    return len(rows)


# --------------------------------------------------------------------------- #
# Ack, nack, extend
# --------------------------------------------------------------------------- #


@dataclass
class ReceiptResult:
    done: list[str] = field(default_factory=list)  # message ids
    stale: list[str] = field(default_factory=list)  # receipts


def parse_receipts(receipts: Sequence[str]) -> list[tuple[int, str, str]]:
    """(message id, lease token, receipt) per receipt; raises InvalidValue."""
    parsed = []
    for receipt in receipts:
        match = _RECEIPT.fullmatch(receipt)
        if match is None:
            raise InvalidValue(f"{receipt[:80]!r} is not a receipt (expected <message id>.<32 hex digits>).")
        parsed.append((int(match[1]), match[2], receipt))
    return parsed


def match_receipts(parsed: list[tuple[int, str, str]], found: Iterable[tuple[int, str]]) -> ReceiptResult:
    found_set = set(found)
    result = ReceiptResult()
    done: set[int] = set()
    for mid, token, receipt in parsed:
        if (mid, token) in found_set and mid not in done:
            result.done.append(str(mid))
            done.add(mid)
        else:
            result.stale.append(receipt)
    return result


def _receipt_rows(queue_id: int, parsed: list[tuple[int, str, str]], states: str, columns: str = "id") -> tuple[str, list[Any]]:
    """A SELECT of ``columns`` of the queue's messages that the receipts name
    (their id AND their current lease token) while in one of ``states`` (an
    SQL list), locked in id order; and its parameters.

    The token check makes the fence: a newer lease wrote a new token, so the
    old holder's receipt matches nothing.

    PostgreSQL: one primary-key probe per receipt, as a LATERAL subquery the
    planner cannot turn into a scan of the queue's index. Statistics of a
    churning table are often stale (and dead index entries many); a scan of
    the queue's rows was measured at 6 ms where the probes take 0.3. The
    queue is checked on the probed row (``queue_id + 0``), not by probing
    the queue's index: that probe looked cheaper for a small queue beside a
    big one than for an unknown queue, so PostgreSQL never settled on the
    prepared statement's generic plan and planned it at every call (0.5 ms;
    a one-message claim + ack took 1.1 ms instead of 0.5)."""
    pairs = sorted({(mid, token) for mid, token, _ in parsed})
    if dialect().postgres:
        receipts, params = json_rows((("id", "bigint"), ("token", "varchar")), pairs)
        sql = (
            f"SELECT m.* FROM ({receipts}) AS r CROSS JOIN LATERAL ("
            f"SELECT {columns} FROM {MESSAGE_TABLE} WHERE id = r.id AND lease_token = r.token "
            f"AND queue_id + 0 = %s AND state IN ({states}) LIMIT 1 FOR UPDATE) m"
        )
        return sql, [*params, queue_id]
    values = ", ".join(["(%s, %s)"] * len(pairs)) or "(NULL, NULL)"  # no receipts: matches nothing
    sql = (
        f"SELECT {columns} FROM {MESSAGE_TABLE} WHERE queue_id = %s AND (id, lease_token) IN (VALUES {values}) "
        f"AND state IN ({states}) ORDER BY id"
    )
    return sql, [queue_id, *(value for pair in pairs for value in pair)]


def _in_flight_rows(queue_id: int, parsed: list[tuple[int, str, str]], columns: str) -> list[tuple[Any, ...]]:
    """``columns`` of the in-flight messages the receipts hold, locked (in a
    transaction of the caller's)."""
    with connection.cursor() as cur:
        cur.execute(*_receipt_rows(queue_id, parsed, "'in_flight'", columns=columns))
        return cur.fetchall()


# What a receipt can still act on: an expired lease that was not taken again
# still carries its token and may be acked (as SQS).
ACKABLE = "'in_flight', 'ready', 'delayed'"


def _ack_delete(queue_id: int, parsed: list[tuple[int, str, str]]) -> tuple[str, list[Any]]:
    rows_sql, params = _receipt_rows(queue_id, parsed, ACKABLE)
    return f"DELETE FROM {MESSAGE_TABLE} WHERE id IN ({rows_sql}) RETURNING id, lease_token, state, origin_queue_id", params


def ack_statement(queue_id: int, parsed: list[tuple[int, str, str]]) -> tuple[str, list[Any]]:
    """PostgreSQL: an ack as one statement, atomic on its own: the delete,
    the queue's counter delta and (for redriven messages) their origins'
    dead_out. Returns (id, lease token) of what it deleted."""
    parts, params = _ack_parts(queue_id, parsed, "main")
    return f"WITH {parts} SELECT id, lease_token FROM main", params


def _ack_parts(queue_id: int, parsed: list[tuple[int, str, str]], name: str) -> tuple[str, list[Any]]:
    """An ack's WITH parts: ``name`` deletes the messages the receipts name
    (returning id, lease_token, state, origin_queue_id), two more write its
    counter deltas. And their parameters."""
    delete, params = _ack_delete(queue_id, parsed)
    counters = {STATE_COUNTER[s]: f"-count(*) FILTER (WHERE state = '{s.value}')" for s in (S.READY, S.DELAYED, S.IN_FLIGHT)}
    delta = _delta_from_main(counters | {"acked_total": "count(*)"}, source=name)
    origins = _delta_from_main({"dead_out": "-count(*)"}, queue="origin_queue_id", source=name)
    parts = (
        f"{name} AS ({delete}), {name}_delta AS ({delta} HAVING count(*) > 0), "
        f"{name}_origins AS ({origins} WHERE origin_queue_id IS NOT NULL GROUP BY origin_queue_id)"
    )
    return parts, [*params, queue_id]


def ack(queue: Queue, receipts: Sequence[str]) -> ReceiptResult:
    """Delete the messages whose receipts are current. A receipt is stale when
    its lease was fenced by a newer delivery, a requeue or an earlier ack; a
    stale ack changes nothing."""
    parsed = parse_receipts(receipts)
    if dialect().postgres:
        with prepared_cursor() as cur:
            cur.execute(*ack_statement(queue.id, parsed))
            found = cur.fetchall()
        return match_receipts(parsed, found)
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(*_ack_delete(queue.id, parsed))
            rows = cur.fetchall()
        tally = Tally()
        for _mid, _tok, state, origin in rows:
            tally.move(queue.id, state, None)
            if origin is not None:
                tally.add(origin, "dead_out", -1)
        tally.add(queue.id, "acked_total", len(rows))
        tally.save()
    return match_receipts(parsed, [(r[0], r[1]) for r in rows])


def extend(queue: Queue, receipts: Sequence[str], visibility_timeout: int, *, now: float | None = None) -> tuple[ReceiptResult, float]:
    """Push the leases of current receipts to now + ``visibility_timeout``."""
    parsed = parse_receipts(receipts)
    now = time.time() if now is None else now
    expires = now + visibility_timeout
    rows_sql, params = _receipt_rows(queue.id, parsed, "'in_flight'")
    # One statement: atomic without a transaction around it.
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE {MESSAGE_TABLE} SET lease_expires_at = %s WHERE id IN ({rows_sql}) RETURNING id, lease_token",
            [expires, *params],
        )
        found = cur.fetchall()
    return match_receipts(parsed, found), expires


def nack(
    queue: Queue, receipts: Sequence[str], *, delay: int = 0, reason: str = "", now: float | None = None
) -> ReceiptResult:
    """Give messages back as failed deliveries: ready again after ``delay``, or
    dead-lettered once they reached the queue's ``max_deliveries``."""
    parsed = parse_receipts(receipts)
    now = time.time() if now is None else now
    with transaction.atomic():
        rows = _in_flight_rows(queue.id, parsed, "id, lease_token, delivery_count, consumer_id, origin_queue_id")
        tally = Tally()
        _release(queue, [(r[0], r[2], r[3], r[4]) for r in rows], tally, now=now, delay=delay, reason=reason, kind="nack")
        tally.add(queue.id, "nacked_total", len(rows))
        tally.save()
    return match_receipts(parsed, [(r[0], r[1]) for r in rows])


def _release(
    queue: Queue,
    rows: list[tuple[int, int, str | None, int | None]],
    tally: Tally,
    *,
    now: float,
    delay: int = 0,
    reason: str = "",
    kind: str,
) -> None:
    """Return locked in-flight rows (id, delivery_count, consumer, origin) to
    ready (or delayed), dead-lettering those that used up their deliveries.
    The lease token is cleared: the old holder's receipt is stale from now."""
    if not rows:
        return
    limit = queue.max_deliveries
    spent = [r for r in rows if limit and r[1] >= limit]
    retry = [r for r in rows if not (limit and r[1] >= limit)]
    if retry:
        target = S.DELAYED if delay > 0 else S.READY
        ids = [r[0] for r in retry]
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE {MESSAGE_TABLE} SET state = %s, visible_at = %s, lease_token = NULL, "
                f"lease_expires_at = NULL, consumer_id = NULL, last_error = %s "
                f"WHERE id IN ({placeholders(len(ids))})",
                [target.value, now + delay, reason[:2000], *ids],
            )
        tally.move(queue.id, S.IN_FLIGHT, target, len(retry))
        if kind == "redelivery":
            tally.add(queue.id, "redelivered_total", len(retry))
            for mid, count, consumer, _origin in retry:
                events.emit("redelivery", queue.name, message=str(mid), consumer=consumer, delivery_count=count, reason=reason)
    if spent:
        _dead_letter(queue, spent, tally, now=now, reason=reason or f"delivered {limit} times without an ack")


def _dead_letter(
    queue: Queue,
    rows: list[tuple[int, int, str | None, int | None]],
    tally: Tally,
    *,
    now: float,
    reason: str,
    source_state: S = S.IN_FLIGHT,
) -> None:
    """Move rows (id, delivery_count, consumer, origin) out of play: into the
    dead-letter queue as ready messages, or into state dead in place."""
    ids = [r[0] for r in rows]
    dlq = queue.dead_letter_queue
    with connection.cursor() as cur:
        if dlq is not None:
            # The origin stays the first queue it died in, so a redrive from a
            # chain of dead-letter queues sends it home.
            cur.execute(
                f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, state = 'ready', origin_queue_id = "
                f"COALESCE(origin_queue_id, %s), delivery_count = 0, lease_token = NULL, "
                f"lease_expires_at = NULL, consumer_id = NULL, visible_at = %s, dead_at = %s, last_error = %s "
                f"WHERE id IN ({placeholders(len(ids))})",
                [dlq.id, queue.id, now, now, reason[:2000], *ids],
            )
        else:
            cur.execute(
                f"UPDATE {MESSAGE_TABLE} SET state = 'dead', lease_token = NULL, lease_expires_at = NULL, "
                f"consumer_id = NULL, dead_at = %s, last_error = %s WHERE id IN ({placeholders(len(ids))})",
                [now, reason[:2000], *ids],
            )
    tally.add(queue.id, STATE_COUNTER[source_state], -len(rows))
    tally.add(queue.id, "dead_lettered_total", len(rows))
    if dlq is not None:
        tally.move(dlq.id, None, S.READY, len(rows))
        # Counted once, against the queue it first died in.
        tally.add(queue.id, "dead_out", sum(1 for r in rows if r[3] is None))
    else:
        tally.add(queue.id, "dead_state", len(rows))
    for mid, count, consumer, _origin in rows:
        events.emit(
            "dead_letter",
            queue.name,
            message=str(mid),
            dead_letter_queue=dlq.name if dlq else None,
            delivery_count=count,
            consumer=consumer,
            reason=reason,
        )


# --------------------------------------------------------------------------- #
# The monitor's sweeps
# --------------------------------------------------------------------------- #


def promote_due(*, now: float | None = None) -> int:
    """Make every delayed message whose time has come ready (all queues)."""
    now = time.time() if now is None else now
    with transaction.atomic():
        tally = Tally()
        n = _promote_due(tally, now)
        tally.save()
    return n


def expire_leases(*, now: float | None = None, limit: int = SWEEP_BATCH) -> int:
    """Return messages whose lease ran out to ready (a redelivery each), or
    dead-letter them when they used up their deliveries. Returns how many.

    Rows are locked with SKIP LOCKED, so two monitors, or a monitor and a
    late ack, never both act on one expiry: the second simply skips it."""
    now = time.time() if now is None else now
    d = dialect()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(
                f"SELECT id, queue_id, delivery_count, consumer_id, origin_queue_id FROM {MESSAGE_TABLE} "
                f"WHERE state = 'in_flight' AND lease_expires_at <= %s ORDER BY lease_expires_at "
                f"LIMIT %s{d.skip_locked}",
                [now, limit],
            )
            rows = cur.fetchall()
        return _release_rows(rows, now=now, reason="lease expired")


def _release_rows(rows: list[tuple], *, now: float, reason: str) -> int:
    """(id, queue_id, delivery_count, consumer, origin) in-flight rows, locked
    by the caller, back to ready as redeliveries."""
    if not rows:
        return 0
    by_queue: dict[int, list[tuple[int, int, str | None, int | None]]] = defaultdict(list)
    for mid, qid, count, consumer, origin in rows:
        by_queue[qid].append((mid, count, consumer, origin))
    queues = Queue.objects.select_related("dead_letter_queue").in_bulk(list(by_queue))
    tally = Tally()
    for qid, items in by_queue.items():
        _release(queues[qid], items, tally, now=now, reason=reason, kind="redelivery")
    tally.save()
    return len(rows)


def release_unanswered(queue_id: int, deliveries: Sequence[Delivery]) -> int:
    """Messages leased to a receive that went away before it could answer
    (its client hung up during its claim, or before a send could hand it
    what it leased for it): back to ready at once, as if never delivered,
    instead of at their visibility timeout. Each is
    fenced by its lease token: one whose lease moved on is left alone.
    Returns how many."""
    from django.db.models import F, Q

    match = Q()
    for d in deliveries:
        match |= Q(pk=d.id, lease_token=d.lease_token)
    with transaction.atomic():
        n = Message.objects.filter(match, queue_id=queue_id, state=S.IN_FLIGHT).update(
            state=S.READY, lease_token=None, lease_expires_at=None, consumer=None, delivery_count=F("delivery_count") - 1
        )
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
        log.exception("could not release %d message(s) leased to a receive that went away; they return at their visibility timeout", len(deliveries))
    finally:
        connection.close()


notify.on_unanswered = release_unanswered_now


async def unlost[T](queue_id: int, look: Awaitable[T], leased: Callable[[T], list[Delivery]]) -> T:
    """Await a receive's look (a claim on a worker thread) so that, should the
    receive be cancelled meanwhile (its client hung up), what the look leases
    goes back to ready as soon as the claim finishes, as if never delivered,
    instead of at its visibility timeout: no client will ever see it."""
    task = asyncio.ensure_future(look)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(functools.partial(_release_if_leased, queue_id, leased))
        raise


def _release_if_leased(queue_id: int, leased: Callable[[Any], list[Delivery]], task: asyncio.Future[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    deliveries = leased(task.result())
    if deliveries:
        task.get_loop().run_in_executor(None, release_unanswered_now, queue_id, deliveries)


def release(queue: Queue, receipts: Sequence[str], *, reason: str, now: float | None = None) -> int:
    """Leases given back without a verdict (a stream closed while its
    consumer held them): ready again at once, each a redelivery, as when a
    consumer leaves. A receipt that is stale changes nothing. Returns how
    many went back."""
    parsed = parse_receipts(receipts)
    if not parsed:
        return 0
    now = time.time() if now is None else now
    with transaction.atomic():
        rows = _in_flight_rows(queue.id, parsed, "id, queue_id, delivery_count, consumer_id, origin_queue_id")
        return _release_rows(rows, now=now, reason=reason)


def release_consumer(consumer_id: str, *, reason: str = "consumer left", now: float | None = None) -> int:
    """Return every message leased to a consumer to ready at once (a
    redelivery each). Returns how many."""
    now = time.time() if now is None else now
    d = dialect()
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(
                f"SELECT id, queue_id, delivery_count, consumer_id, origin_queue_id FROM {MESSAGE_TABLE} "
                f"WHERE state = 'in_flight' AND consumer_id = %s ORDER BY id{d.for_update}",
                [consumer_id],
            )
            rows = cur.fetchall()
        return _release_rows(rows, now=now, reason=reason)


def prune_dedup(*, now: float | None = None) -> int:
    """Forget dedup ids older than the window."""
    now = time.time() if now is None else now
    from .models import DedupKey

    deleted, _ = DedupKey.objects.filter(expires_at__lte=now).delete()
    return deleted


# Every message is inserted, claimed and deleted; counter deltas are
# inserted and folded away each second; dedup keys expire in bulk.
CHURNING_TABLES = [MESSAGE_TABLE, DELTA_TABLE, DEDUP_TABLE]

# The tables, among CHURNING_TABLES, that autovacuum would vacuum now
# were it on: dead rows past the table's own autovacuum threshold (migration
# 0005 set them low), the way autovacuum reckons it.
_UNVACUUMED = """
SELECT s.relname
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
CROSS JOIN LATERAL (
    SELECT
        coalesce(max(split_part(o, '=', 2)) FILTER (WHERE o LIKE 'autovacuum_vacuum_threshold=%%'),
                 current_setting('autovacuum_vacuum_threshold'))::float8 AS threshold,
        coalesce(max(split_part(o, '=', 2)) FILTER (WHERE o LIKE 'autovacuum_vacuum_scale_factor=%%'),
                 current_setting('autovacuum_vacuum_scale_factor'))::float8 AS scale,
        bool_or(o = 'autovacuum_enabled=false') AS disabled
    FROM unnest(coalesce(c.reloptions, '{}')) AS o
) t
WHERE s.relname = ANY(%s)
  AND (current_setting('autovacuum') = 'off' OR coalesce(t.disabled, false))
  AND s.n_dead_tup > t.threshold + t.scale * greatest(c.reltuples, 0)
ORDER BY s.n_dead_tup DESC
"""


def vacuum_unvacuumed() -> list[str]:
    """PostgreSQL with autovacuum off (server-wide, or for one of our
    tables): VACUUM each churning table that autovacuum would have vacuumed
    by now, as it would. Without it a busy queue's dead rows pile up and
    every claim wades through them: on the 2-core machine, a one-message
    round trip took 7.5 ms instead of 2.4 after a few hundred thousand
    messages had passed through. ``MQ_VACUUM=off`` leaves vacuuming to the
    operator. Must run outside a transaction (the monitor's vacuum thread).
    Returns the tables vacuumed."""
    if not (settings.MQ_VACUUM and dialect().postgres) or connection.in_atomic_block:
        return []
    with connection.cursor() as cur:
        cur.execute(_UNVACUUMED, [CHURNING_TABLES])
        due = [name for (name,) in cur.fetchall() if _vacuum_rests_until.get(name, 0.0) <= time.monotonic()]
        for name in due:
            started = time.monotonic()
            cur.execute(f"VACUUM (ANALYZE) {connection.ops.quote_name(name)}")
            took = time.monotonic() - started
            _vacuum_rests_until[name] = time.monotonic() + VACUUM_REST_FACTOR * took
            log.info("autovacuum is off: vacuumed %s in %.0f ms", name, took * 1000)
    return due


# A table is not vacuumed again for this many times as long as its last
# vacuum took: at most a tenth of the time goes to vacuuming it. Dead rows
# that an open transaction still holds cannot be reclaimed, and without a
# rest each check would scan the table and its indexes again for nothing.
VACUUM_REST_FACTOR = 9.0
_vacuum_rests_until: dict[str, float] = {}  # table -> time.monotonic(); the vacuum thread's alone


def enforce_retention(*, now: float | None = None) -> int:
    """Delete waiting messages older than their queue's ``retention``, as the
    queue's owner asked. Counted (``expired_total``) and announced."""
    now = time.time() if now is None else now
    removed = 0
    for queue in Queue.objects.filter(retention__isnull=False):
        assert queue.retention is not None
        with transaction.atomic():
            qs = Message.objects.filter(
                queue=queue, state__in=[S.READY, S.DELAYED, S.DEAD], enqueued_at__lte=now - queue.retention
            )
            n = _delete_counted(queue, qs, "expired_total")
            if n:
                events.emit("retention", queue.name, count=n)
            removed += n
    return removed


# --------------------------------------------------------------------------- #
# Operator actions: purge, redrive, browse
# --------------------------------------------------------------------------- #


def _delete_counted(queue: Queue, qs: Any, total_counter: str) -> int:
    """Delete the messages of ``qs`` (all in ``queue``), keeping counters right.
    Call inside a transaction."""
    tally = Tally()
    ids = list(qs.values_list("id", flat=True))
    if not ids:
        return 0
    # Count the rows as the DELETE found them: between the read above and
    # the delete a consumer may have claimed, nacked or acked one (PostgreSQL),
    # and a count from the read would then drift. Rows are locked in id
    # order, as every multi-row statement that may wait does, so a purge and
    # an ack never deadlock.
    deleted: list[tuple[int, str, int | None]] = []
    with connection.cursor() as cur:
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            cur.execute(
                f"DELETE FROM {MESSAGE_TABLE} WHERE {_locked_in_id_order(f'id IN ({placeholders(len(chunk))})')} "
                f"RETURNING id, state, origin_queue_id",
                chunk,
            )
            deleted += cur.fetchall()
    for _mid, state, origin in deleted:
        tally.move(queue.id, state, None)
        if origin is not None:
            tally.add(origin, "dead_out", -1)
    tally.add(queue.id, total_counter, len(deleted))
    tally.save()
    return len(deleted)


def _locked_in_id_order(where: str) -> str:
    """``id IN (…)`` for the rows matching ``where``, locked in id order first
    (PostgreSQL). Statements that lock several rows and may wait for them
    take them in one global order, so no two of them can deadlock."""
    return f"id IN (SELECT id FROM {MESSAGE_TABLE} WHERE {where} ORDER BY id{dialect().for_update})"


def purge(queue: Queue) -> int:
    """Delete every message in the queue, leased ones too (their acks become
    stale). Returns how many were deleted."""
    with transaction.atomic():
        # NO KEY: a plain FOR UPDATE would also block every insert that
        # references the queue (messages, counter deltas) while this purge
        # waits for message rows those inserters hold: a deadlock.
        Queue.objects.select_for_update(no_key=True).filter(pk=queue.pk).first()
        n = _delete_counted(queue, Message.objects.filter(queue=queue), "purged_total")
        events.emit("purge", queue.name, count=n)
    return n


def redrive(queue: Queue, *, max_messages: int | None = None, now: float | None = None) -> int:
    """Give dead messages another life: those dead in this queue go back to
    ready here; those dead-lettered into this queue go back to the queue they
    came from. Leased messages are left alone. Returns how many moved.
    Raises InvalidValue for a ``max_messages`` below 1."""
    if max_messages is not None and max_messages < 1:
        # 0 would otherwise mean "no limit" here and a negative LIMIT is an SQL error.
        raise InvalidValue(f"max must be at least 1, not {max_messages}.")
    now = time.time() if now is None else now
    d = dialect()
    limit = f" LIMIT {int(max_messages)}" if max_messages else ""
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(
                f"SELECT id, state, origin_queue_id FROM {MESSAGE_TABLE} WHERE queue_id = %s AND "
                f"(state = 'dead' OR (origin_queue_id IS NOT NULL AND state IN ('ready', 'delayed'))) "
                f"ORDER BY id{limit}{d.for_update}",
                [queue.id],
            )
            rows = cur.fetchall()
        if not rows:
            return 0
        tally = Tally()
        by_target: dict[int, list[int]] = defaultdict(list)
        for mid, state, origin in rows:
            target_queue = origin if origin is not None else queue.id
            by_target[target_queue].append(mid)
            tally.move(queue.id, state, None)
            tally.move(target_queue, None, S.READY)
            if origin is not None:
                tally.add(origin, "dead_out", -1)
        with connection.cursor() as cur:
            for target_queue, ids in by_target.items():
                cur.execute(
                    f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, state = 'ready', origin_queue_id = NULL, "
                    f"delivery_count = 0, visible_at = %s, lease_token = NULL, consumer_id = NULL, "
                    f"dead_at = NULL WHERE id IN ({placeholders(len(ids))})",
                    [target_queue, now, *ids],
                )
        tally.save()
        events.emit("redrive", queue.name, count=len(rows))
    return len(rows)


def browse(queue: Queue, *, state: str, limit: int = 100, after: int | None = None) -> list[Message]:
    """Messages in one state, oldest first, without leasing them; ``after`` is
    the last id of the previous page. State ``dead`` includes messages
    dead-lettered out of this queue into its dead-letter queue."""
    if state == S.DEAD:
        from django.db.models import Q

        qs = Message.objects.filter(Q(queue=queue, state=S.DEAD) | Q(origin_queue=queue))
    else:
        qs = Message.objects.filter(queue=queue, state=state)
    if after is not None:
        qs = qs.filter(id__gt=after)
    return list(qs.select_related("queue", "origin_queue").order_by("id")[:limit])


# --------------------------------------------------------------------------- #
# Async twins for async views
# --------------------------------------------------------------------------- #

_aget_queue = sync_to_async(get_queue)


async def aget_queue(name: str) -> Queue:
    """``get_queue`` for async views; a cached queue costs no thread hop."""
    hit = _queue_cache.get(name)
    if hit is not None and hit[0] > time.monotonic():
        return copy.copy(hit[1])
    return await _aget_queue(name)


def receive_before_wait(queue: Queue, **options: Any) -> list[Delivery]:
    """``receive`` for a long poll. When nothing was leased, the request's
    database connection goes back (to the pool, on PostgreSQL) in the same
    thread hand-off, so a receive waiting for a wake-up holds no connection.
    Inside a caller's transaction (tests, or code that called us in one) the
    connection is the caller's and is left alone."""
    return _before_wait(receive(queue, **options))


def ack_and_receive_before_wait(queue: Queue, receipts: Sequence[str], **options: Any) -> tuple[list[Delivery], ReceiptResult]:
    """``ack_and_receive`` for a long poll, as ``receive_before_wait``."""
    deliveries, acked = ack_and_receive(queue, receipts, **options)
    return _before_wait(deliveries), acked


def _before_wait(deliveries: list[Delivery]) -> list[Delivery]:
    if not deliveries and not connection.in_atomic_block:
        connection.close()
    return deliveries


areceive = sync_to_async(receive_before_wait)


# --------------------------------------------------------------------------- #
# Consumers
# --------------------------------------------------------------------------- #


def heartbeat_interval(timeout: int) -> float:
    """How often a consumer should beat: three chances before it is dead."""
    return max(1.0, timeout / 3)


def register_consumer(name: str, queues: list[str], meta: dict[str, Any], heartbeat_timeout: int | None) -> Consumer:
    """Register a live consumer of ``queues`` (which must exist)."""
    known = set(Queue.objects.filter(name__in=queues).values_list("name", flat=True))
    missing = [q for q in queues if q not in known]
    if missing:
        raise QueueNotFound(f"No queue named {missing[0]!r}.")
    now = time.time()
    return Consumer.objects.create(
        name=name,
        queues=list(dict.fromkeys(queues)),
        meta=meta,
        heartbeat_timeout=heartbeat_timeout or settings.MQ_HEARTBEAT_TIMEOUT_SECONDS,
        registered_at=now,
        last_heartbeat=now,
    )


def get_consumer(consumer_id: str) -> Consumer:
    consumer = Consumer.objects.filter(pk=consumer_id).first()
    if consumer is None:
        raise ConsumerNotFound(f"No consumer with id {consumer_id!r}.")
    return consumer


def heartbeat(consumer_id: str, *, now: float | None = None) -> Consumer:
    """Record a heartbeat. Raises ConsumerDead once the monitor declared the
    consumer dead: its leases were handed to others, it must register again."""
    now = time.time() if now is None else now
    # Conditional update: a beat racing the monitor's death sentence either
    # lands first (and the consumer lives) or finds it dead, never both.
    updated = Consumer.objects.filter(pk=consumer_id).exclude(status=ConsumerStatus.DEAD).update(
        last_heartbeat=now, status=ConsumerStatus.ALIVE
    )
    if not updated:
        consumer = get_consumer(consumer_id)
        raise ConsumerDead(f"Consumer {consumer.name!r} was declared dead; register again.")
    return get_consumer(consumer_id)


def leave(consumer_id: str) -> int:
    """Graceful leave: the consumer is gone and its leases are released at
    once. Returns how many messages went back to ready."""
    with transaction.atomic():
        consumer = get_consumer(consumer_id)
        Consumer.objects.filter(pk=consumer.pk).update(status=ConsumerStatus.DEAD, dead_at=time.time())
        return release_consumer(consumer.pk, reason=f"consumer {consumer.name} left")


def consumer_in_flight(consumer_ids: Sequence[str]) -> dict[str, int]:
    return dict(_count_by(Message.objects.filter(state=S.IN_FLIGHT, consumer_id__in=list(consumer_ids)), "consumer_id"))


# --------------------------------------------------------------------------- #
# Dashboard: the operator's message browser
# --------------------------------------------------------------------------- #


def browse_page(
    queue: Queue, *, state: str, group: str | None = None, newest: bool = False, limit: int = 50, cursor: int | None = None
) -> list[Message]:
    """Like ``browse``, also by FIFO group and newest first; ``cursor`` is the
    last id of the previous page (keyset pagination: pages stay stable while
    messages come and go). Served by the (queue, state, id) index."""
    from django.db.models import Q

    if state == S.DEAD:
        qs = Message.objects.filter(Q(queue=queue, state=S.DEAD) | Q(origin_queue=queue))
    else:
        qs = Message.objects.filter(queue=queue, state=state)
    if group:
        qs = qs.filter(group_key=group)
    if cursor is not None:
        qs = qs.filter(id__lt=cursor) if newest else qs.filter(id__gt=cursor)
    return list(qs.select_related("queue", "origin_queue").order_by("-id" if newest else "id")[:limit])


# --------------------------------------------------------------------------- #
# Operator actions (admin)
# --------------------------------------------------------------------------- #

# Messages one operator action may touch: a bigger selection is a purge or a
# redrive, which the queue actions do without holding every id in memory.
MAX_OPERATOR_MESSAGES = 10_000


@dataclass(frozen=True)
class _Locked:
    id: int
    queue_id: int
    state: str
    delivery_count: int
    consumer_id: str | None
    origin_queue_id: int | None


def _lock_messages(ids: Iterable[int | str]) -> list[_Locked]:
    """The messages with these ids, locked until commit. Locking closes the
    race with a receive, an ack or the lease sweep acting on the same rows: they
    wait for this transaction (or skip the rows) and then see its outcome."""
    wanted = sorted({int(i) for i in ids})
    if len(wanted) > MAX_OPERATOR_MESSAGES:
        raise InvalidValue(f"An action may touch at most {MAX_OPERATOR_MESSAGES} messages; narrow the selection.")
    if not wanted:
        return []
    d = dialect()
    rows: list[_Locked] = []
    with connection.cursor() as cur:
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            cur.execute(
                f"SELECT id, queue_id, state, delivery_count, consumer_id, origin_queue_id FROM {MESSAGE_TABLE} "
                f"WHERE id IN ({placeholders(len(chunk))}) ORDER BY id{d.for_update}",
                chunk,
            )
            rows += [_Locked(*r) for r in cur.fetchall()]
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
        tally = Tally()
        by_target: dict[int, list[int]] = defaultdict(list)
        for m in rows:
            if m.state == S.READY and m.origin_queue_id is None:
                continue
            target_queue = m.origin_queue_id if m.origin_queue_id is not None else m.queue_id
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
                cur.execute(
                    f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, state = 'ready', origin_queue_id = NULL, "
                    f"visible_at = %s, lease_token = NULL, lease_expires_at = NULL, consumer_id = NULL, "
                    f"dead_at = NULL WHERE id IN ({placeholders(len(ids))})",
                    [target_queue, now, *ids],
                )
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
        tally = Tally()
        for m in rows:
            state = S.DELAYED if m.state == S.DELAYED else S.READY
            tally.move(m.queue_id, m.state, None)
            tally.move(target.id, None, state)
            if m.origin_queue_id is not None:
                tally.add(m.origin_queue_id, "dead_out", -1)
        ids = [m.id for m in rows]
        with connection.cursor() as cur:
            cur.execute(
                f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, "
                f"state = CASE WHEN state = 'delayed' THEN 'delayed' ELSE 'ready' END, "
                f"visible_at = CASE WHEN state = 'delayed' THEN visible_at ELSE %s END, "
                f"origin_queue_id = NULL, lease_token = NULL, lease_expires_at = NULL, consumer_id = NULL, "
                f"dead_at = NULL WHERE id IN ({placeholders(len(ids))})",
                [target.id, now, *ids],
            )
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
        groups: dict[tuple[int, str], list[tuple[int, int, str | None, int | None]]] = defaultdict(list)
        for m in _lock_messages(message_ids):
            if m.state != S.DEAD:
                groups[(m.queue_id, m.state)].append((m.id, m.delivery_count, m.consumer_id, m.origin_queue_id))
        if not groups:
            return 0
        queues = Queue.objects.select_related("dead_letter_queue").in_bulk({qid for qid, _state in groups})
        tally = Tally()
        for (qid, state), rows in groups.items():
            _dead_letter(queues[qid], rows, tally, now=now, reason=reason, source_state=S(state))
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
            n = _delete_counted(queues[qid], Message.objects.filter(id__in=ids), "purged_total")
            events.emit("purge", queues[qid].name, count=n, messages=[str(i) for i in ids[:100]], by=by)
    return sum(len(ids) for ids in by_queue.values())


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
