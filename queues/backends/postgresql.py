"""The broker's SQL on PostgreSQL.

What differs from SQLite: rows are locked (``FOR UPDATE SKIP LOCKED``), so
claimers never wait for each other; wake-ups cross processes by NOTIFY; and
the hot operations (a send, a receive with its acks, an ack) are each ONE
statement that also writes its counter deltas: data-modifying WITH parts
always run, so the statement is atomic on its own, with no BEGIN/COMMIT
round trips.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from ..models import COUNTER_FIELDS, Queue
from .common import (
    ACKS_FIRST,
    CLAIMED,
    DELTA_INSERT_INTO,
    FIFO_HEAD,
    LAPSED,
    LEASED,
    MESSAGE_TABLE,
    NEW_MESSAGE_COLUMNS,
    NOT_ACKED,
    QUEUE_TABLE,
    Statement,
    Statements,
)

NOTIFY_CHANNEL = "mq_ready"

# A claim's counter delta: its rows went from ready to in flight.
CLAIM_COUNTERS = {"ready": "-count(*)", "in_flight": "count(*)", "received_total": "count(*)"}
# The last column of a receive's rows: 0 for a claimed message, -1 for an
# acked one; -2 in a row without an id: the queue has leases that ran out.
ACKED_ROW = -1
LAPSED_ROW = -2

# Every message is inserted, claimed and deleted; counter deltas are
# inserted and folded away each second; dedup keys expire in bulk.
UNVACUUMED = """
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


def ready_heads(queue: str) -> str:
    """A recursive WITH part, ``heads``: each priority among the ready
    messages of ``queue`` (an SQL expression) with its oldest message's id,
    highest priority first. One probe of mq_msg_claim (queue, -priority, id)
    per priority present, each the first entry below the last: ready rows
    are not in mq_msg_state, and a walk of mq_msg_queue (queue, id) for them
    reads every older message in flight or delayed."""
    ready = f"SELECT m.priority, m.id FROM {MESSAGE_TABLE} m WHERE m.queue_id = {queue} AND m.state = 'ready'"
    first = "ORDER BY m.priority DESC, m.id LIMIT 1"
    return (
        f"RECURSIVE heads(priority, id) AS (({ready} {first}) UNION ALL "
        f"SELECT n.priority, n.id FROM heads h CROSS JOIN LATERAL ({ready} AND m.priority < h.priority {first}) n)"
    )


# A send's columns that its messages often share (the queue, the time, the
# defaults), passed once when they do; not the body: bodies differ.
_SHARED_NEW_MESSAGE_COLUMNS = frozenset(i for i, (name, _) in enumerate(NEW_MESSAGE_COLUMNS) if name != "body")


class ReceiveRows(NamedTuple):
    """A receive statement's rows, told apart."""

    claimed: list[tuple[Any, ...]]  # CLAIMED columns
    promoted: int  # delayed messages that came due (not among the claimed)
    acked: list[tuple[int, str]]  # (id, lease token) of each acked message
    lapsed: bool  # the queue has in-flight messages whose lease ran out


def json_rows(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]], *, shared: Collection[int] = ()) -> Statement:
    """A SELECT of ``rows`` as typed ``columns`` (name, SQL type), in order,
    passed as ONE parameter: a JSON array of arrays.

    psycopg quotes an array parameter element by element in Python (client
    side binding, as Django uses it): for a batch of 100 messages that took
    longer than the INSERT itself. orjson writes the same rows twenty times
    faster, and the server parses them once (jsonb: ``json`` would parse each
    element again for every column it reads, ten times slower).

    A column among ``shared`` (indexes) that holds the same value in every
    row is passed once, as a parameter of its own before the rows, and left
    out of them: each column a row carries costs the server a lookup and a
    cast per row (a send of 100 spent as long on its 15 columns as on
    parsing the JSON)."""
    if shared and rows:
        by_column = list(zip(*rows, strict=True))
        same = {i for i in shared if by_column[i].count(by_column[i][0]) == len(rows)}
        if same:
            kept = [i for i in range(len(columns)) if i not in same]
            position = {i: n for n, i in enumerate(kept)}
            values = ", ".join(
                f"%s::{kind} AS {name}" if i in same else f"(e->>{position[i]})::{kind} AS {name}"
                for i, (name, kind) in enumerate(columns)
            )
            params: list[Any] = [by_column[i][0] for i in range(len(columns)) if i in same]
            params.append(orjson.dumps(list(zip(*(by_column[i] for i in kept), strict=True))).decode())
            return f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS e", params
    values = ", ".join(f"(e->>{i})::{kind} AS {name}" for i, (name, kind) in enumerate(columns))
    # default=tuple: rows may be named tuples, which orjson does not take as arrays.
    return f"SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS e", [orjson.dumps(rows, default=tuple).decode()]


def delta_from(source: str, counters: dict[str, str], queue: str = "%s") -> str:
    """INSERT one delta row per group of ``source``'s rows: ``counters`` maps
    a counter to its SQL expression (the others are 0), ``queue`` is the
    queue id's expression (a parameter unless given)."""
    values = ", ".join(counters.get(f, "0") for f in COUNTER_FIELDS)
    return f"{DELTA_INSERT_INTO} SELECT {queue}, {values} FROM {source}"


def counted(statement: str, counters: dict[str, str]) -> str:
    """Two WITH parts: ``main AS (statement)`` and its counter delta (one
    more parameter: the queue id, after the statement's own)."""
    return f"main AS ({statement}), d AS ({delta_from('main', counters)} HAVING count(*) > 0)"


# A FIFO claim owning up to this many slots probes each (``claim_in_slots``);
# one owning more (a consumer among fewer than about 17, of 4,096 slots)
# filters the queue's ready rows on their slot.
FEW_SLOTS = 256


def no_flush_wait(async_commit: bool) -> str:
    """With ``async_commit``, a WHERE clause, always true, that turns
    ``synchronous_commit`` off for the statement's own transaction alone
    (set_config's third argument: local, the session's value is back after
    the commit): for the final SELECT of a statement that is a transaction
    of its own. A subquery that names no column of the query is a one-time
    filter, run once before the first row, whether any row follows or not;
    the setting counts at commit. Else nothing."""
    return " WHERE (SELECT set_config('synchronous_commit', 'off', true)) = 'off'" if async_commit else ""


DEAD_LETTER_LOCK_KEY = 0x6D71_646C  # "mqdl": the advisory lock of dead-letter queue changes


class PostgreSQL(Statements):
    postgres = True
    skip_locked = " FOR UPDATE SKIP LOCKED"
    for_update = " FOR UPDATE"
    for_share = " FOR SHARE"
    for_key_share = " FOR KEY SHARE"
    random_token = "replace(gen_random_uuid()::text, '-', '')"

    def serialize_dead_letter_links(self) -> Statement | None:
        return "SELECT pg_advisory_xact_lock(%s)", [DEAD_LETTER_LOCK_KEY]

    def notify_ready(self, ready: Mapping[int, int | None]) -> Statement | None:
        # Delivered at commit to every process's listener (notify.parse_payload).
        payload = ",".join(str(qid) if n is None else f"{qid}:{n}" for qid, n in sorted(ready.items()))
        return "pg_notify(%s, %s)", [NOTIFY_CHANNEL, payload]

    def announce(self, queue_id: int, ready: int) -> Statement:
        """Tell other processes' waiting receives that ``ready`` messages of
        this queue became ready outside a send."""
        return "SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, f"{queue_id}:{ready}"]

    def insert_messages(self, queue_id: int, rows: Sequence[Sequence[Any]]) -> Statement:
        names = ", ".join(name for name, _ in NEW_MESSAGE_COLUMNS)
        rows_sql, params = json_rows(NEW_MESSAGE_COLUMNS, rows, shared=_SHARED_NEW_MESSAGE_COLUMNS)
        # Checked once, before the first row (it names no column of the rows).
        held, held_params = self.queue_held(queue_id)
        return f"INSERT INTO {MESSAGE_TABLE} ({names}) {rows_sql} WHERE {held} RETURNING id", [*params, *held_params]

    def send(self, queue_id: int, rows: Sequence[Sequence[Any]], delta: Statement | None, notify: Statement | None) -> Statement:
        """A send as one statement: the messages, their counter delta and the
        NOTIFY. One row: the array of new ids (NULL when the queue is gone)."""
        sql, params = self.insert_messages(queue_id, rows)
        ctes = f"ins AS ({sql})"
        if delta is not None:
            ctes += f", d AS ({delta[0]})"
            params += delta[1]
        notify_sql = ""
        if notify is not None:
            notify_sql = f", {notify[0]}"
            params += notify[1]
        # One output row: the ids, and the NOTIFY called once.
        return f"WITH {ctes} SELECT array_agg(id){notify_sql} FROM ins", params

    def first_ready_id(self, queue: str) -> str:
        # The oldest ready message is the oldest of each priority's oldest.
        return f"(WITH {ready_heads(queue)} SELECT min(id) FROM heads)"

    def ready_ids(self, queue_id: int, *, after: int | None, newest: bool, limit: int) -> Statement:
        # Up to ``limit`` of each priority, in id order (mq_msg_claim holds
        # a priority's ids in order), merged: ``limit`` entries read for each
        # priority present (10 at most through the API), however the queue's
        # ready rows lie among its others.
        after_sql, order = (" AND m.id < %s", " DESC") if newest else (" AND m.id > %s", "")
        page = (
            f"SELECT m.id FROM {MESSAGE_TABLE} m WHERE m.queue_id = %s AND m.state = 'ready' AND m.priority = h.priority"
            f"{after_sql if after is not None else ''} ORDER BY m.id{order} LIMIT %s"
        )
        sql = f"WITH {ready_heads('%s')} SELECT p.id FROM heads h CROSS JOIN LATERAL ({page}) p ORDER BY p.id{order} LIMIT %s"
        return sql, [queue_id, queue_id, queue_id, *([] if after is None else [after]), limit, limit]

    def picked(self, select: str) -> str:
        # An array, computed once: as "id IN (subquery)" PostgreSQL may run
        # the subquery again for a semi-join, each run picking (and locking)
        # rows of its own, so that a claim leased more than its LIMIT.
        return f"id = ANY(ARRAY({select}))"

    def lists_queue(self, column: str) -> str:
        return f"{column} @> jsonb_build_array(%s::text)"

    def in_slots(self, slots: Sequence[int]) -> Statement:
        return "m.group_slot = ANY(%s::smallint[])", [list(slots)]

    def claim(
        self, queue: Queue, *, max_messages: int, expires: float, consumer_id: str | None, slots: Sequence[int] | None, skip_acked: bool = False
    ) -> Statement:
        """For a queue that is not FIFO: mq_ready_head (migration 0006) makes
        the same selection, planned so it always walks the claim index,
        whatever the statistics say. With ``skip_acked`` it leaves alone the
        messages that the statement's ``acked`` part deletes (``receive``)."""
        if queue.fifo:
            if slots is not None and len(slots) <= FEW_SLOTS:
                return self.claim_in_slots(queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id, slots=slots)
            return super().claim(queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id, slots=slots)
        alive, alive_params = self.consumer_alive(consumer_id)
        conditions = [c for c in (alive, ACKS_FIRST if skip_acked else "") if c]
        gate = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        skip = NOT_ACKED if skip_acked else ""
        claim = f"{self.lease_set()}WHERE id = ANY(ARRAY(SELECT mq_ready_head(%s, %s){gate})){skip} RETURNING {CLAIMED}"
        return claim, [expires, consumer_id, queue.id, max_messages, *alive_params]

    def claim_in_slots(self, queue: Queue, *, max_messages: int, expires: float, consumer_id: str | None, slots: Sequence[int]) -> Statement:
        """A FIFO claim of a consumer that owns few slots: each slot's ready
        group heads through mq_msg_slot, in delivery order, the best of them
        claimed. Filtering the queue's ready rows on their slot instead reads
        every row ahead of the consumer's own, and those of other consumers
        that do not keep up pile up ahead."""
        alive, alive_params = self.consumer_alive(consumer_id)
        heads = (
            f"SELECT h.id FROM unnest(%s::smallint[]) AS s(slot) CROSS JOIN LATERAL ("
            f"SELECT m.id, m.priority FROM {MESSAGE_TABLE} m WHERE m.queue_id = %s AND m.group_slot = s.slot "
            f"AND m.state = 'ready' AND {FIFO_HEAD} ORDER BY m.priority DESC, m.id LIMIT %s) h "
            f"ORDER BY h.priority DESC, h.id LIMIT %s"
        )
        picked = (
            f"SELECT m.id FROM {MESSAGE_TABLE} m WHERE m.id IN ({heads})"
            f"{' AND ' + alive if alive else ''} ORDER BY m.priority DESC, m.id LIMIT %s{self.skip_locked}"
        )
        claim = f"{self.lease_set()}WHERE {self.picked(picked)} RETURNING {CLAIMED}"
        # Each slot's walk stops at twice its share: past a group's head it
        # reads the rest of that group's ready rows, each failing the head
        # test. A receive whose heads crowd into few slots gets fewer than
        # it asked for, and the rest at its next.
        per_slot = min(max_messages, -(-2 * max_messages // len(slots)))
        params = [expires, consumer_id, list(slots), queue.id, per_slot, max_messages, *alive_params, max_messages]
        return claim, params

    def receive(
        self,
        queue: Queue,
        *,
        now: float,
        expires: float,
        max_messages: int,
        consumer_id: str | None,
        acks: Sequence[tuple[int, str]] | None,
        slots: Sequence[int] | None = None,
        async_commit: bool = False,
    ) -> Statement:
        """A receive as one statement: the queue's due delayed messages become
        ready, and ready ones are claimed (on a FIFO queue, of ``slots`` when
        given, and never with ``acks``), each with its counter delta. With
        ``acks`` ((id, lease token) pairs) the
        statement first acks them, as ``ack`` does; the promotion and the
        claim wait for the acks to be done (ACKS_FIRST), so a round of a
        consumer costs one commit, not two. Rows: see ``split_receive``.
        Delayed messages that came due are not among the claimed: one
        statement sees one snapshot, where they were still delayed.
        It also tells whether the queue has leases that ran out (besides
        those its acks delete), for the broker to release (a release
        dead-letters, emits events: more than a WITH part should do): one
        probe of mq_msg_lease, which finds nothing on a healthy queue. Its
        ORDER BY keeps it on that index in the prepared statement's generic
        plan, which knows no time: guessing a third of the queue's leases
        lapsed, it read the table until the first (10 ms on 100,000 rows).
        ``async_commit``: its commit does not wait for the WAL flush."""
        if queue.fifo and acks is not None:
            raise ValueError("a FIFO claim must see the acks before it: they cannot share its statement")
        claim, params = self.claim(
            queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id, slots=slots, skip_acked=acks is not None
        )
        ack_part, ack_params = "", list[Any]()
        if acks is not None:
            ack_sql, ack_params = self.ack_parts(queue.id, acks, "acked")
            ack_part = f"{ack_sql}, "
        promote, promote_params = self.promote(now, queue.id, after_acks=acks is not None)
        promoted_delta = delta_from("promoted", {"delayed": "-count(*)", "ready": "count(*)"})
        sql = (
            f"WITH {ack_part}promoted AS ({promote}), pd AS ({promoted_delta} HAVING count(*) > 0), {counted(claim, CLAIM_COUNTERS)} "
            f"SELECT *, 0 FROM main{no_flush_wait(async_commit)} UNION ALL "
            f"SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*) FROM promoted HAVING count(*) > 0 UNION ALL "
            f"SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, {LAPSED_ROW} FROM ("
            f"SELECT 1 FROM {MESSAGE_TABLE} WHERE {LAPSED}{NOT_ACKED if acks is not None else ''} "
            f"ORDER BY lease_expires_at LIMIT 1) lapsed"
        )
        if acks is not None:
            sql += f" UNION ALL SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, lease_token, {ACKED_ROW} FROM acked"
        return sql, [*ack_params, *promote_params, queue.id, *params, queue.id, queue.id, now]

    @staticmethod
    def split_receive(rows: list[tuple[Any, ...]]) -> ReceiveRows:
        """A ``receive``'s rows: the claimed messages (without the last
        column), then one row whose id is NULL and whose last column counts
        the delayed messages that came due, one whose id is NULL and whose
        last column is LAPSED_ROW when the queue has leases that ran out,
        then (id, lease token) per acked message."""
        claimed, promoted, acked, lapsed = [], 0, [], False
        for r in rows:
            if r[0] is None:
                if r[-1] == LAPSED_ROW:
                    lapsed = True
                else:
                    promoted += r[-1]
            elif r[-1] == ACKED_ROW:
                acked.append((r[0], r[7]))
            else:
                claimed.append(r[:-1])
        return ReceiveRows(claimed, promoted, acked, lapsed)

    def reclaim(
        self,
        queue: Queue,
        *,
        max_messages: int,
        expires: float,
        consumer_id: str | None,
        slots: Sequence[int] | None = None,
        async_commit: bool = False,
    ) -> Statement:
        """The second claim of a receive whose statement promoted due delayed
        messages (its snapshot did not see them ready), with its delta."""
        claim, params = self.claim(queue, max_messages=max_messages, expires=expires, consumer_id=consumer_id, slots=slots)
        return f"WITH {counted(claim, CLAIM_COUNTERS)} SELECT * FROM main{no_flush_wait(async_commit)}", [*params, queue.id]

    def expired_leases(self, now: float, limit: int, queue_id: int | None = None) -> Statement:
        """Without a queue (the sweep): each queue's lapsed leases through
        mq_msg_lease (queue, expiry), a walk per queue, so the sweep reads
        what lapsed, not every lease held."""
        if queue_id is not None:
            return super().expired_leases(now, limit, queue_id)
        sql = (
            f"SELECT e.* FROM {QUEUE_TABLE} q CROSS JOIN LATERAL (SELECT {LEASED} FROM {MESSAGE_TABLE} m "
            f"WHERE m.queue_id = q.id AND m.state = 'in_flight' AND m.lease_expires_at <= %s "
            f"ORDER BY m.lease_expires_at LIMIT %s{self.skip_locked}) e LIMIT %s"
        )
        return sql, [now, limit, limit]

    def receipt_rows(self, queue_id: int, pairs: Sequence[tuple[int, str]], states: str, columns: str = "id") -> Statement:
        """For the statements that update what receipts hold (an ack's
        delete is ``ack_delete``'s): one primary-key probe per receipt, as a
        LATERAL subquery the planner cannot turn into a scan of the queue's
        index, locked before the update: statistics of
        a churning table are often stale (and dead index entries many), and
        such a scan was measured at 20 times the probes' cost. The queue is
        checked on the probed row (``queue_id + 0``), not by probing the
        queue's index: that probe looked cheaper for a small queue beside a
        big one than for an unknown queue, so PostgreSQL never settled on the
        prepared statement's generic plan and planned it at every call."""
        receipts, params = json_rows((("id", "bigint"), ("token", "varchar")), pairs)
        sql = (
            f"SELECT m.* FROM ({receipts}) AS r CROSS JOIN LATERAL ("
            f"SELECT {columns} FROM {MESSAGE_TABLE} WHERE id = r.id AND lease_token = r.token "
            f"AND queue_id + 0 = %s AND state IN ({states}) LIMIT 1 FOR UPDATE) m"
        )
        return sql, [*params, queue_id]

    def ack_delete(self, queue_id: int, pairs: Sequence[tuple[int, str]]) -> Statement:
        """One pass: mq_ack (migration 0014) deletes the rows the receipts
        name, through a primary-key probe per receipt in id order, whatever
        the statistics, without locking them first (a lock is a WAL record
        per message). The fence holds without the lock: the DELETE checks
        the token on the row it deletes. The race: a consumer's ack of a
        message whose lease just expired, while the lease sweep gives it back
        (and another consumer claims it). The ack's snapshot still shows the
        consumer's token; the DELETE waits for the sweep's transaction, then
        PostgreSQL reads the row's newest version and checks it again
        (EvalPlanQual: every condition on the row, the join's to its receipt
        included), finds the token cleared or another consumer's, and leaves
        the message alone. A concurrent extend keeps the token: the ack
        deletes after it. Rows: as ``Statements.ack_delete``."""
        # orjson: as json_rows; sorted, so the probes take the rows in id order.
        return "SELECT * FROM mq_ack(%s::jsonb, %s)", [orjson.dumps(sorted(pairs)).decode(), queue_id]

    def ack_parts(self, queue_id: int, pairs: Sequence[tuple[int, str]], name: str) -> Statement:
        """An ack's WITH parts: ``name`` deletes the messages the receipts name
        (returning id, lease_token, state, origin_queue_id), two more write
        its counter deltas (the queue's, and for redriven messages their
        origins' dead_out)."""
        delete, params = self.ack_delete(queue_id, pairs)
        counters = {state: f"-count(*) FILTER (WHERE state = '{state}')" for state in ("ready", "delayed", "in_flight")}
        delta = delta_from(name, counters | {"acked_total": "count(*)"})
        origins = delta_from(name, {"dead_out": "-count(*)"}, queue="origin_queue_id")
        parts = (
            f"{name} AS ({delete}), {name}_delta AS ({delta} HAVING count(*) > 0), "
            f"{name}_origins AS ({origins} WHERE origin_queue_id IS NOT NULL GROUP BY origin_queue_id)"
        )
        return parts, [*params, queue_id]

    def ack(self, queue_id: int, pairs: Sequence[tuple[int, str]], *, async_commit: bool = False) -> Statement:
        """An ack as one statement with its counter deltas; rows: (id, lease
        token) of what it deleted."""
        parts, params = self.ack_parts(queue_id, pairs, "main")
        return f"WITH {parts} SELECT id, lease_token FROM main{no_flush_wait(async_commit)}", params

    def extend(self, queue_id: int, pairs: Sequence[tuple[int, str]], expires: float, *, async_commit: bool = False) -> Statement:
        sql, params = super().extend(queue_id, pairs, expires)
        if not async_commit:
            return sql, params
        return f"WITH main AS ({sql}) SELECT id, lease_token FROM main{no_flush_wait(async_commit)}", params

    def async_commit(self) -> Statement:
        return "SET LOCAL synchronous_commit = off", []

    def unvacuumed(self, tables: Sequence[str]) -> Statement | None:
        return UNVACUUMED, [list(tables)]
