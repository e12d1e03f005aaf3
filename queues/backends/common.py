"""The broker's SQL that reads the same on PostgreSQL and SQLite.

Each method is one named statement: it returns the SQL text and its
parameters, and says what its rows are. ``postgresql.py`` and ``sqlite.py``
override what differs; the broker never assembles SQL of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

from ..models import COUNTER_FIELDS, GONE, Consumer, ConsumerStatus, Message, Queue, QueueStats, QueueStatsDelta

Statement = tuple[str, list[Any]]

MESSAGE_TABLE = Message._meta.db_table
DEDUP_TABLE = "queues_dedupkey"
DELTA_TABLE = QueueStatsDelta._meta.db_table
STATS_TABLE = QueueStats._meta.db_table
QUEUE_TABLE = Queue._meta.db_table
CONSUMER_TABLE = Consumer._meta.db_table
# A condition on a consumer row: not gone (declared dead, or left).
LIVE_CONSUMER = "status NOT IN (" + ", ".join(f"'{s}'" for s in GONE) + ")"
# The same, as the statuses it allows: a list mq_consumer_health can look up,
# where the gone consumers (never deleted) pile up.
LIVE_STATUSES = "status IN (" + ", ".join(f"'{s}'" for s in ConsumerStatus if s not in GONE) + ")"
# Start of every statement that writes counter deltas (rows follow).
DELTA_INSERT_INTO = f"INSERT INTO {DELTA_TABLE} (queue_id, {', '.join(COUNTER_FIELDS)})"

# The columns a new message is written with (the lease, consumer, origin and
# dead_at start out NULL), and their PostgreSQL types.
NEW_MESSAGE_COLUMNS = (
    ("queue_id", "bigint"),
    ("state", "varchar"),
    ("priority", "smallint"),
    ("body", "text"),
    ("headers", "text"),
    ("group_key", "varchar"),
    ("group_slot", "smallint"),
    ("dedup_id", "varchar"),
    ("delivery_count", "integer"),
    ("enqueued_at", "float8"),
    ("visible_at", "float8"),
    ("last_error", "text"),
    # Set only for a message handed to a waiting receive (broker.publish.Handing).
    ("lease_token", "varchar"),
    ("lease_expires_at", "float8"),
    ("consumer_id", "varchar"),
)

# In a statement that moves messages into the queue its first parameter
# names (the same id again): a message without a group gets the slot that
# makes it everyone's in a FIFO queue (``hashing.UNGROUPED``), else keeps its own.
SLOT_IN_NEW_QUEUE = f"group_slot = COALESCE(group_slot, (SELECT -1 FROM {QUEUE_TABLE} q WHERE q.id = %s AND q.fifo)), "

# A claim's columns, in Delivery's order (the lease expiry is the caller's).
CLAIMED = "id, body, headers, priority, group_key, delivery_count, enqueued_at, lease_token"
# A leased row's columns for a release or a dead-letter (broker.receipts.Leased).
LEASED = "id, queue_id, delivery_count, consumer_id, origin_queue_id"
# A message of one queue (a parameter) whose lease ran out by a time (the
# next parameter): in the order mq_msg_lease, on (queue, lease expiry) of
# in-flight rows, serves with one probe.
LAPSED = "queue_id = %s AND state = 'in_flight' AND lease_expires_at <= %s"

# A ready message is claimable when it is not in a FIFO group, or when it is
# its group's head: no other message of the group is in flight and none older
# is still waiting. So a group has at most one message in flight, in order.
# "g.group_key <> ''" says what the OR already implies, in words the planner
# needs to probe mq_msg_group (partial: grouped rows only) instead of reading
# the whole table for each candidate row.
FIFO_HEAD = (
    f"(m.group_key = '' OR NOT EXISTS (SELECT 1 FROM {MESSAGE_TABLE} g WHERE g.queue_id = m.queue_id "
    "AND g.group_key = m.group_key AND g.group_key <> '' AND g.id <> m.id AND (g.state = 'in_flight' "
    "OR (g.id < m.id AND g.state IN ('ready', 'delayed')))))"
)

# What a receipt can still act on: an expired lease that was not taken again
# still carries its token and may be acked (as SQS).
ACKABLE = "'in_flight', 'ready', 'delayed'"

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


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


class Statements:
    """The statements both databases run alike; a backend overrides the rest."""

    postgres = False
    #: appended to a SELECT that picks rows to claim
    skip_locked = ""
    #: appended to a SELECT that must keep its rows until commit
    for_update = ""
    #: appended to a SELECT whose rows must not change until commit (others may read)
    for_share = ""
    #: appended to a SELECT whose rows must not be deleted until commit
    for_key_share = ""
    #: a fresh random 32-character token, computed per row in SQL
    random_token = ""

    # -- counters ------------------------------------------------------------

    def delta_insert(self, rows: Sequence[Sequence[int]]) -> Statement:
        """Counter delta rows (queue id, then COUNTER_FIELDS)."""
        values = ", ".join([f"({placeholders(len(rows[0]))})"] * len(rows))
        return f"{DELTA_INSERT_INTO} VALUES {values}", [value for row in rows for value in row]

    def notify_ready(self, ready: Mapping[int, int | None]) -> Statement | None:
        """An expression that wakes other processes' receives waiting on these
        queues at commit (how many messages became ready on each, None for
        an unknown number); None where one process is all there is."""
        return None

    def save_counts(self, delta: Statement | None, notify: Statement | None) -> Statement | None:
        """A transaction's counter deltas and its wake-up in one round trip
        (a data-modifying WITH always runs); None when there is neither."""
        if delta is not None and notify is not None:
            return f"WITH d AS ({delta[0]}) SELECT {notify[0]}", [*delta[1], *notify[1]]
        if notify is not None:
            return f"SELECT {notify[0]}", notify[1]
        return delta

    def queue_counts(self, queue_ids: Sequence[int] | None) -> Statement:
        """Rows: queue id, then COUNTER_FIELDS with pending deltas added.

        Folded counters and pending deltas in ONE statement, so one snapshot:
        read in two, a fold committing between them would move deltas out of
        the second read after the first had missed them, and counts would
        briefly go backwards. Only the pending deltas (a few per queue) are
        summed; the folded rows pass through (summing all of them cost
        several ms at 1,000 queues, much of it making NUMERIC sums)."""
        where, params = "", []
        if queue_ids is not None:
            where = f" WHERE queue_id IN ({placeholders(len(queue_ids))})"
            params = list(queue_ids)
        sums = ", ".join(f"CAST(SUM({f}) AS BIGINT) AS {f}" for f in COUNTER_FIELDS)
        sql = (
            f"SELECT s.queue_id, {', '.join(f's.{f} + COALESCE(d.{f}, 0)' for f in COUNTER_FIELDS)} "
            f"FROM {STATS_TABLE} s LEFT JOIN ("
            f"SELECT queue_id, {sums} FROM {DELTA_TABLE}{where} GROUP BY queue_id) d ON d.queue_id = s.queue_id"
            + where.replace("queue_id", "s.queue_id")
        )
        return sql, params * 2

    def first_ready_id(self, queue: str) -> str:
        """A scalar subquery: the id of the oldest ready message of ``queue``
        (an SQL expression), or NULL. One probe of mq_msg_state (whole on
        SQLite): the state is matched as a range and the order names it, so
        only mq_msg_state serves the order, not a walk of the primary key
        that for an empty queue beside a big one reads the whole table."""
        return (
            f"(SELECT m.id FROM {MESSAGE_TABLE} m WHERE m.queue_id = {queue} "
            f"AND m.state >= 'ready' AND m.state <= 'ready' ORDER BY m.state, m.id LIMIT 1)"
        )

    def oldest_ready(self, queue_ids: Sequence[int] | None) -> Statement:
        """Rows: queue id, enqueue time of its oldest ready message (or NULL):
        the lowest id among ready rows, found through an index per queue."""
        sql = (
            f"SELECT q.id, (SELECT m.enqueued_at FROM {MESSAGE_TABLE} m WHERE m.id = {self.first_ready_id('q.id')}) "
            f"FROM {QUEUE_TABLE} q"
            + ("" if queue_ids is None else f" WHERE q.id IN ({placeholders(len(queue_ids))})")
        )
        return sql, list(queue_ids or [])

    def ready_ids(self, queue_id: int, *, after: int | None, newest: bool, limit: int) -> Statement:
        """Rows: the ids of up to ``limit`` ready messages of the queue, by
        id (newest first with ``newest``), past ``after``. A walk of
        mq_msg_state (whole on SQLite)."""
        after_sql, order = (" AND m.id < %s", " DESC") if newest else (" AND m.id > %s", "")
        sql = (
            f"SELECT m.id FROM {MESSAGE_TABLE} m WHERE m.queue_id = %s AND m.state = 'ready'"
            f"{after_sql if after is not None else ''} ORDER BY m.id{order} LIMIT %s"
        )
        return sql, [queue_id, *([] if after is None else [after]), limit]

    def take_deltas(self) -> Statement:
        """Delete the pending deltas this statement sees; rows: the deltas.
        A delta committed meanwhile stays for the next fold: none is lost or
        counted twice."""
        return f"DELETE FROM {DELTA_TABLE} RETURNING queue_id, {', '.join(COUNTER_FIELDS)}", []

    def add_to_stats(self, queue_id: int, values: Sequence[int]) -> Statement:
        sets = ", ".join(f"{f} = {f} + %s" for f in COUNTER_FIELDS)
        return f"UPDATE {STATS_TABLE} SET {sets} WHERE queue_id = %s", [*values, queue_id]

    # -- publish ---------------------------------------------------------------

    def queue_held(self, queue_id: int) -> Statement:
        """A condition: the queue still exists, and cannot be deleted before
        this transaction ends. Messages have no foreign-key constraint on
        their queue (``Message.queue``): whatever writes a queue id into
        them checks it here, once. On PostgreSQL the lock sees the newest
        version of the queue's row, whatever the statement's snapshot, so a
        queue deleted since then is seen gone; ``broker.delete_queue``, in
        turn, deletes the messages that were sent while it waited for the
        lock. SQLite runs one writer at a time."""
        return f"EXISTS (SELECT 1 FROM {QUEUE_TABLE} WHERE id = %s{self.for_key_share})", [queue_id]

    def hold_queues(self, queue_ids: Collection[int]) -> Statement:
        """Rows: the ids among ``queue_ids`` whose queues still exist, held
        until commit as ``queue_held`` holds them, in id order."""
        ids = sorted(queue_ids)
        sql = f"SELECT id FROM {QUEUE_TABLE} WHERE id IN ({placeholders(len(ids))}) ORDER BY id{self.for_key_share}"
        return sql, ids

    def insert_messages(self, queue_id: int, rows: Sequence[Sequence[Any]]) -> Statement:
        """A batch of new messages (NEW_MESSAGE_COLUMNS order) of one queue;
        rows: their ids, none when the queue is gone (``queue_held``)."""
        names = ", ".join(name for name, _ in NEW_MESSAGE_COLUMNS)
        row_sql = f"({placeholders(len(NEW_MESSAGE_COLUMNS))})"
        held, held_params = self.queue_held(queue_id)
        sql = (
            f"INSERT INTO {MESSAGE_TABLE} ({names}) SELECT * FROM (VALUES {', '.join([row_sql] * len(rows))}) "
            f"WHERE {held} RETURNING id"
        )
        return sql, [*(value for row in rows for value in row), *held_params]

    def claim_dedup_keys(self, queue_id: int, keys: Sequence[str], now: float, expires_at: float) -> Statement:
        """Insert dedup keys; rows: those this transaction now owns (new, or
        expired and taken over). A key inserted by a concurrent transaction
        makes this statement wait for it to commit, then counts as taken."""
        values = ", ".join(["(%s, %s, NULL, %s)"] * len(keys))
        params: list[Any] = []
        for key in keys:
            params += [queue_id, key, expires_at]
        sql = (
            f"INSERT INTO {DEDUP_TABLE} (queue_id, dedup_id, message_id, expires_at) VALUES {values} "
            f"ON CONFLICT (queue_id, dedup_id) DO UPDATE SET message_id = NULL, expires_at = excluded.expires_at "
            f"WHERE {DEDUP_TABLE}.expires_at <= %s RETURNING dedup_id"
        )
        return sql, [*params, now]

    def dedup_message_ids(self, queue_id: int, keys: Sequence[str]) -> Statement:
        """Rows: dedup id, the id of the message first sent with it."""
        sql = f"SELECT dedup_id, message_id FROM {DEDUP_TABLE} WHERE queue_id = %s AND dedup_id IN ({placeholders(len(keys))})"
        return sql, [queue_id, *keys]

    def bind_dedup_keys(self, queue_id: int, ids: dict[str, int]) -> Statement:
        cases = " ".join(["WHEN %s THEN %s"] * len(ids))
        params: list[Any] = []
        for key, mid in ids.items():
            params += [key, mid]
        sql = (
            f"UPDATE {DEDUP_TABLE} SET message_id = CASE dedup_id {cases} END "
            f"WHERE queue_id = %s AND dedup_id IN ({placeholders(len(ids))})"
        )
        return sql, [*params, queue_id, *ids]

    def slots_for_fifo(self, queue_id: int) -> Statement:
        """A queue became FIFO: its messages without a group become everyone's."""
        return f"UPDATE {MESSAGE_TABLE} SET group_slot = -1 WHERE queue_id = %s AND group_slot IS NULL", [queue_id]

    def queue_consumers(self, queue_name: str) -> Statement:
        """Rows: the ids of the consumers registered for this queue that are
        not gone (dead or left), in order."""
        sql = f"SELECT id FROM {CONSUMER_TABLE} WHERE {LIVE_STATUSES} AND {self.lists_queue('queues')} ORDER BY id"
        return sql, [queue_name]

    def lists_queue(self, column: str) -> str:
        """A condition: the JSON list in ``column`` holds the parameter."""
        return f"EXISTS (SELECT 1 FROM json_each({column}) WHERE value = %s)"

    def in_slots(self, slots: Sequence[int]) -> Statement:
        """A condition on a claim's row ``m``: its FIFO slot is one of these."""
        return "m.group_slot IN (SELECT value FROM json_each(%s))", [orjson.dumps(list(slots)).decode()]

    def live_consumers(self, consumer_ids: Sequence[str]) -> Statement:
        """Rows: the ids, among these, of consumers not gone (dead or left)."""
        sql = f"SELECT id FROM {CONSUMER_TABLE} WHERE id IN ({placeholders(len(consumer_ids))}) AND {LIVE_CONSUMER}"
        return sql, list(consumer_ids)

    # -- waiting ---------------------------------------------------------------

    def claimable(self, queue_ids: Sequence[int], now: float, most: int) -> Statement:
        """Rows: queue id, and how many of its messages a receive could claim
        now, counting at most ``most`` of each kind: ready ones, delayed ones
        that came due (a claim promotes them) and in-flight ones whose lease
        ran out (a claim releases them). Paused queues are left out. Each
        count stops at ``most`` rows of an index (mq_msg_state, mq_msg_due,
        mq_msg_lease), so a deep queue costs what a shallow one does. The
        lapsed ones are counted in lease order, so that a plan made without
        the time (a prepared statement's) walks mq_msg_lease too, rather than
        reading the table until enough rows pass (``PostgreSQL.receive``)."""
        lapsed = LAPSED.replace("queue_id = %s", "queue_id = q.id")
        sql = (
            f"SELECT q.id, (SELECT count(*) FROM (SELECT 1 FROM {MESSAGE_TABLE} m WHERE m.queue_id = q.id "
            f"AND m.state = 'ready' LIMIT %s) r) + (SELECT count(*) FROM (SELECT 1 FROM {MESSAGE_TABLE} m "
            f"WHERE m.queue_id = q.id AND m.state = 'delayed' AND m.visible_at <= %s LIMIT %s) d) + "
            f"(SELECT count(*) FROM (SELECT 1 FROM {MESSAGE_TABLE} m WHERE m.{lapsed} ORDER BY m.lease_expires_at LIMIT %s) l) "
            f"FROM {QUEUE_TABLE} q WHERE q.id IN ({placeholders(len(queue_ids))}) AND NOT q.paused"
        )
        return sql, [most, now, most, now, most, *queue_ids]

    # -- claim -----------------------------------------------------------------

    def claim(
        self, queue: Queue, *, max_messages: int, expires: float, consumer_id: str | None, slots: Sequence[int] | None
    ) -> Statement:
        """Lease up to ``max_messages`` ready messages of the queue (highest
        priority first, then oldest; on a FIFO queue only group heads, and
        only of these ``slots`` when given); rows: CLAIMED.

        SKIP LOCKED closes the race of two receivers claiming one row: each
        takes rows nobody else holds, without waiting for other claimers."""
        head = f" AND {FIFO_HEAD}" if queue.fifo else ""
        owned, owned_params = ("", []) if slots is None else self.in_slots(slots)
        alive, alive_params = self.consumer_alive(consumer_id)
        picked = (
            f"SELECT m.id FROM {MESSAGE_TABLE} m WHERE m.queue_id = %s AND m.state = 'ready'{head}"
            f"{' AND ' + owned if owned else ''}{' AND ' + alive if alive else ''} "
            f"ORDER BY m.priority DESC, m.id LIMIT %s{self.skip_locked}"
        )
        claim = f"{self.lease_set()}WHERE {self.picked(picked)} RETURNING {CLAIMED}"
        return claim, [expires, consumer_id, queue.id, *owned_params, *alive_params, max_messages]

    def picked(self, select: str) -> str:
        """A condition: the row's id is one of those ``select`` picks (and
        locks), taken as they are picked."""
        return f"id IN ({select})"

    def lease_set(self) -> str:
        """The start of a claim: the UPDATE that leases its rows (parameters:
        the lease expiry, the consumer)."""
        return (
            f"UPDATE {MESSAGE_TABLE} SET state = 'in_flight', delivery_count = delivery_count + 1, "
            f"lease_token = {self.random_token}, lease_expires_at = %s, consumer_id = %s "
        )

    def consumer_alive(self, consumer_id: str | None) -> Statement:
        """A condition: the claiming consumer (if any) is not gone (dead or left).

        A consumer that left (or was declared dead) while its receive was
        waiting claims nothing: its leases were just released and nobody
        would release these. FOR SHARE orders the claim against the death
        sentence, which updates the consumer row before releasing its
        leases."""
        if consumer_id is None:
            return "", []
        return f"EXISTS (SELECT 1 FROM {CONSUMER_TABLE} c WHERE c.id = %s AND c.{LIVE_CONSUMER}{self.for_share})", [consumer_id]

    def promote(self, now: float, queue_id: int | None = None, *, after_acks: bool = False) -> Statement:
        """Due delayed messages (of one queue, or all) become ready, locked in
        id order; rows: their queue ids. ``after_acks``: in a statement with
        an ``acked`` part, once it is done, and not its rows."""
        where = "state = 'delayed' AND visible_at <= %s" + ("" if queue_id is None else " AND queue_id = %s")
        if after_acks:
            where += f" AND {ACKS_FIRST}"
        skip = NOT_ACKED if after_acks else ""
        sql = f"UPDATE {MESSAGE_TABLE} SET state = 'ready' WHERE {self.locked_in_id_order(where)}{skip} RETURNING queue_id"
        return sql, [now] if queue_id is None else [now, queue_id]

    def locked_in_id_order(self, where: str) -> str:
        """``id IN (…)`` for the rows matching ``where``, locked in id order
        first. Statements that lock several rows and may wait for them take
        them in one global order, so no two of them can deadlock."""
        return f"id IN (SELECT id FROM {MESSAGE_TABLE} WHERE {where} ORDER BY id{self.for_update})"

    # -- receipts --------------------------------------------------------------

    def receipt_rows(self, queue_id: int, pairs: Sequence[tuple[int, str]], states: str, columns: str = "id") -> Statement:
        """``columns`` of the queue's messages that the (id, lease token)
        pairs name while in one of ``states`` (an SQL list), locked in id
        order. The token check makes the fence: a newer lease wrote a new
        token, so the old holder's receipt matches nothing."""
        values = ", ".join(["(%s, %s)"] * len(pairs)) or "(NULL, NULL)"  # no receipts: matches nothing
        sql = (
            f"SELECT {columns} FROM {MESSAGE_TABLE} WHERE queue_id = %s AND (id, lease_token) IN (VALUES {values}) "
            f"AND state IN ({states}) ORDER BY id"
        )
        return sql, [queue_id, *(value for pair in pairs for value in pair)]

    def ack_delete(self, queue_id: int, pairs: Sequence[tuple[int, str]]) -> Statement:
        """Delete the messages the receipts hold; rows: id, lease token,
        state, origin queue id."""
        rows_sql, params = self.receipt_rows(queue_id, pairs, ACKABLE)
        return f"DELETE FROM {MESSAGE_TABLE} WHERE id IN ({rows_sql}) RETURNING id, lease_token, state, origin_queue_id", params

    def extend(self, queue_id: int, pairs: Sequence[tuple[int, str]], expires: float, *, async_commit: bool = False) -> Statement:
        """Push the in-flight leases the receipts hold to ``expires``; rows:
        id, lease token. One statement: atomic without a transaction.
        ``async_commit``: see ``async_commit()``."""
        rows_sql, params = self.receipt_rows(queue_id, pairs, "'in_flight'")
        return f"UPDATE {MESSAGE_TABLE} SET lease_expires_at = %s WHERE id IN ({rows_sql}) RETURNING id, lease_token", [expires, *params]

    def unlease(self, ids: Sequence[int], *, state: str, visible_at: float, reason: str) -> Statement:
        """Leased messages back to ``state`` (ready or delayed) without their
        lease: the old holder's receipt is stale from now."""
        sql = (
            f"UPDATE {MESSAGE_TABLE} SET state = %s, visible_at = %s, lease_token = NULL, "
            f"lease_expires_at = NULL, consumer_id = NULL, last_error = %s "
            f"WHERE id IN ({placeholders(len(ids))})"
        )
        return sql, [state, visible_at, reason[:2000], *ids]

    def dead_letter_into(self, ids: Sequence[int], *, dlq_id: int, origin_id: int, now: float, reason: str) -> Statement:
        """Messages into a dead-letter queue, ready there. The origin stays
        the first queue they died in, so a redrive from a chain of
        dead-letter queues sends them home."""
        sql = (
            f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, {SLOT_IN_NEW_QUEUE}state = 'ready', origin_queue_id = "
            f"COALESCE(origin_queue_id, %s), delivery_count = 0, lease_token = NULL, "
            f"lease_expires_at = NULL, consumer_id = NULL, visible_at = %s, dead_at = %s, last_error = %s "
            f"WHERE id IN ({placeholders(len(ids))})"
        )
        return sql, [dlq_id, dlq_id, origin_id, now, now, reason[:2000], *ids]

    def dead_in_place(self, ids: Sequence[int], *, now: float, reason: str) -> Statement:
        sql = (
            f"UPDATE {MESSAGE_TABLE} SET state = 'dead', lease_token = NULL, lease_expires_at = NULL, "
            f"consumer_id = NULL, dead_at = %s, last_error = %s WHERE id IN ({placeholders(len(ids))})"
        )
        return sql, [now, reason[:2000], *ids]

    def expired_leases(self, now: float, limit: int, queue_id: int | None = None) -> Statement:
        """Rows (LEASED) of in-flight messages (of one queue, or all) whose
        lease ran out, locked; SKIP LOCKED, so two monitors, a monitor and a
        receive, or either and a late ack, never both act on one expiry: the
        second simply skips it (or, once the first committed, no longer finds
        it in flight and lapsed)."""
        if queue_id is not None:
            sql = f"SELECT {LEASED} FROM {MESSAGE_TABLE} WHERE {LAPSED} ORDER BY lease_expires_at LIMIT %s{self.skip_locked}"
            return sql, [queue_id, now, limit]
        sql = (
            f"SELECT {LEASED} FROM {MESSAGE_TABLE} "
            f"WHERE state = 'in_flight' AND lease_expires_at <= %s ORDER BY lease_expires_at "
            f"LIMIT %s{self.skip_locked}"
        )
        return sql, [now, limit]

    def leases_of_consumer(self, consumer_id: str) -> Statement:
        """Rows (LEASED) of the messages leased to a consumer, locked."""
        sql = f"SELECT {LEASED} FROM {MESSAGE_TABLE} WHERE state = 'in_flight' AND consumer_id = %s ORDER BY id{self.for_update}"
        return sql, [consumer_id]

    def unanswered(self, queue_id: int, pairs: Sequence[tuple[int, str]]) -> Statement:
        """Messages leased to a receive that never answered: ready again as if
        never delivered, each fenced by its lease token."""
        values = " OR ".join(["(id = %s AND lease_token = %s)"] * len(pairs))
        sql = (
            f"UPDATE {MESSAGE_TABLE} SET state = 'ready', lease_token = NULL, lease_expires_at = NULL, "
            f"consumer_id = NULL, delivery_count = delivery_count - 1 "
            f"WHERE queue_id = %s AND state = 'in_flight' AND ({values})"
        )
        return sql, [queue_id, *(value for pair in pairs for value in pair)]

    # -- operator actions ------------------------------------------------------

    def lock_messages(self, ids: Sequence[int]) -> Statement:
        """Rows: id, queue id, state, delivery count, consumer, origin queue
        of these messages, locked in id order until commit."""
        sql = (
            f"SELECT id, queue_id, state, delivery_count, consumer_id, origin_queue_id FROM {MESSAGE_TABLE} "
            f"WHERE id IN ({placeholders(len(ids))}) ORDER BY id{self.for_update}"
        )
        return sql, list(ids)

    def delete_messages(self, ids: Sequence[int]) -> Statement:
        """Delete these messages, locked in id order; rows: id, state, origin."""
        where = self.locked_in_id_order(f"id IN ({placeholders(len(ids))})")
        return f"DELETE FROM {MESSAGE_TABLE} WHERE {where} RETURNING id, state, origin_queue_id", list(ids)

    def ready_again(self, ids: Sequence[int], *, queue_id: int, now: float, fresh: bool) -> Statement:
        """Messages ready now in ``queue_id``, no longer leased nor counted as
        dead-lettered; ``fresh`` also restarts their delivery count (a
        redrive; a requeue keeps it)."""
        count = "delivery_count = 0, " if fresh else ""
        sql = (
            f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, {SLOT_IN_NEW_QUEUE}state = 'ready', origin_queue_id = NULL, "
            f"{count}visible_at = %s, lease_token = NULL, lease_expires_at = NULL, consumer_id = NULL, "
            f"dead_at = NULL WHERE id IN ({placeholders(len(ids))})"
        )
        return sql, [queue_id, queue_id, now, *ids]

    def move_into(self, ids: Sequence[int], *, queue_id: int, now: float) -> Statement:
        """Messages into another queue: ready now there (delayed ones keep
        their delay), leases fenced, no longer counted as dead-lettered."""
        sql = (
            f"UPDATE {MESSAGE_TABLE} SET queue_id = %s, {SLOT_IN_NEW_QUEUE}"
            f"state = CASE WHEN state = 'delayed' THEN 'delayed' ELSE 'ready' END, "
            f"visible_at = CASE WHEN state = 'delayed' THEN visible_at ELSE %s END, "
            f"origin_queue_id = NULL, lease_token = NULL, lease_expires_at = NULL, consumer_id = NULL, "
            f"dead_at = NULL WHERE id IN ({placeholders(len(ids))})"
        )
        return sql, [queue_id, queue_id, now, *ids]

    # -- durability ------------------------------------------------------------

    def async_commit(self) -> Statement | None:
        """The first statement of a transaction whose commit need not wait for
        its WAL to reach the disk (``broker.durability``); the one-statement
        claims and acks take an ``async_commit`` option instead. None where
        no commit waits anyway: SQLite in WAL mode with synchronous=NORMAL
        syncs its WAL at checkpoints, not at commits."""
        return None

    # -- maintenance -----------------------------------------------------------

    def serialize_dead_letter_links(self) -> Statement | None:
        """A lock, held to the end of the transaction, that serializes
        changes of dead-letter queues (``broker.check_dead_letter_chain``);
        None where transactions are serialized anyway (SQLite's BEGIN
        IMMEDIATE: one writer at a time)."""
        return None

    def unvacuumed(self, tables: Sequence[str]) -> Statement | None:
        """Rows: the tables among these that autovacuum would vacuum now were
        it on; None where vacuuming is not ours to do."""
        return None
