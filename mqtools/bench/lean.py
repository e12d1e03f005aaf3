"""The lean SQL peer: the least a queue in PostgreSQL can do, as a floor
under mqadmin's design.

One minimal table in a schema of its own (``LEAN_SCHEMA``, created at the
start of a run and dropped at its end): ``id``, the queue, the JSON body, a
priority, when the message is visible, how often it was delivered, its
lease token and when it came. Besides the primary key it has one index, the
claim's (queue, priority DESC, id). A claim leases up to ``n`` visible rows
in one UPDATE over ``FOR UPDATE SKIP LOCKED``; an ack deletes by id. Each is
a statement of its own with its own commit (``synchronous_commit`` as the
database has it, ``on`` in ``make bench``).

No counters, no delayed messages to promote, no consumers, no groups, no
dead-lettering, no NOTIFY, no receipt fencing: what is left is what
PostgreSQL itself charges for inserting, leasing and deleting a message.
The raw SQL peer is mqadmin's own statements; the distance between the two
is what mqadmin's design costs on top of PostgreSQL.
"""

from __future__ import annotations

import time

import psycopg

from .measure import BODY_BYTES, Countdown, conninfo, run_consumers, vacuum_between_rounds

LEAN_SCHEMA = "mq_lean"
LEAN_TABLE = f"{LEAN_SCHEMA}.message"
# Seconds a claimed message stays invisible: longer than any round.
LEASE_SECONDS = 30

_SCHEMA = (
    f"CREATE SCHEMA IF NOT EXISTS {LEAN_SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {LEAN_TABLE} ("
    " id bigserial PRIMARY KEY,"
    " queue_id integer NOT NULL,"
    " body jsonb NOT NULL,"
    " priority smallint NOT NULL DEFAULT 0,"
    " visible_at timestamptz NOT NULL DEFAULT now(),"
    " delivery_count integer NOT NULL DEFAULT 0,"
    " lease_token uuid,"
    " enqueued_at timestamptz NOT NULL DEFAULT now()"
    # The same vacuum thresholds as mqadmin's message table (migration 0005),
    # so that where autovacuum runs it treats both alike.
    ") WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000)",
    f"CREATE INDEX IF NOT EXISTS message_claim ON {LEAN_TABLE} (queue_id, priority DESC, id)",
)

SEND = f"INSERT INTO {LEAN_TABLE} (queue_id, body) SELECT %s, e FROM jsonb_array_elements(%s::jsonb) AS e RETURNING id"
CLAIM = (
    f"UPDATE {LEAN_TABLE} SET visible_at = now() + make_interval(secs => %s), "
    "delivery_count = delivery_count + 1, lease_token = gen_random_uuid() "
    f"WHERE id = ANY(ARRAY(SELECT id FROM {LEAN_TABLE} WHERE queue_id = %s AND visible_at <= now() "
    "ORDER BY priority DESC, id LIMIT %s FOR UPDATE SKIP LOCKED)) "
    "RETURNING id, lease_token, body, delivery_count"
)
ACK = f"DELETE FROM {LEAN_TABLE} WHERE id = ANY(%s::bigint[])"
# The ack of the last batch riding on the next claim: one commit a round, as
# mqadmin's consumers (and the raw SQL peer) do it. The acked rows are leased,
# so the claim, seeing the statement's one snapshot, cannot pick them.
ACK_AND_CLAIM = f"WITH acked AS ({ACK}) {CLAIM}"
FILL = f"INSERT INTO {LEAN_TABLE} (queue_id, body) SELECT %s, %s::jsonb FROM generate_series(1, %s)"

# The lean peer's queue id: its table holds no other.
QUEUE_ID = 1


def create_schema() -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        for statement in _SCHEMA:
            conn.execute(statement)


def drop_schema() -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {LEAN_SCHEMA} CASCADE")


def lean_available() -> str | None:
    """None once its schema is there; else why the peer cannot run."""
    try:
        create_schema()
    except Exception as exc:
        return f"could not set up its schema: {type(exc).__name__}: {str(exc)[:100]}"
    return None


class LeanSQL:
    """The lean table's statements over one autocommit connection of its own."""

    def __init__(self) -> None:
        self.conn = psycopg.connect(conninfo(), autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def publish(self, n: int, body: bytes = BODY_BYTES) -> list[int]:
        # The batch as one JSON parameter, as mqadmin's send passes its rows.
        bodies = b"[" + b",".join([body] * n) + b"]"
        return [r[0] for r in self.conn.execute(SEND, [QUEUE_ID, bodies.decode()]).fetchall()]

    def claim(self, n: int) -> list[int]:
        """Lease up to ``n`` visible messages; their ids."""
        return [r[0] for r in self.conn.execute(CLAIM, [LEASE_SECONDS, QUEUE_ID, n]).fetchall()]

    def ack(self, ids: list[int]) -> int:
        """Delete the messages; how many there were."""
        return self.conn.execute(ACK, [ids]).rowcount

    def ack_and_claim(self, ids: list[int], n: int) -> list[int]:
        """``ack(ids)`` and ``claim(n)`` in one statement and one commit."""
        return [r[0] for r in self.conn.execute(ACK_AND_CLAIM, [ids, LEASE_SECONDS, QUEUE_ID, n]).fetchall()]


def fill(n: int) -> None:
    """``n`` visible messages more, in one INSERT ... SELECT FROM generate_series.

    Then ANALYZE: statistics of the empty table (the last vacuum's) have the
    planner sort every visible row and scan the table for the ids, where the
    claim index gives the first ``n`` in order. mqadmin's claim is planned
    the index's way whatever the statistics (mq_ready_head); the floor gets
    the plan that fits too."""
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(FILL, [QUEUE_ID, BODY_BYTES.decode(), n])
        conn.execute(f"ANALYZE {LEAN_TABLE}")


def empty() -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        conn.execute(f"DELETE FROM {LEAN_TABLE}")
    vacuum_between_rounds([LEAN_TABLE])


def waiting() -> int:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {LEAN_TABLE}").fetchone()
    return row[0] if row else 0


# --------------------------------------------------------------------------- #
# The peer's rounds
# --------------------------------------------------------------------------- #


def produce(per: int, count: int) -> float:
    """Messages a second sent in ``count`` statements of ``per``."""
    lean = LeanSQL()
    try:
        t = time.perf_counter()
        for _ in range(count):
            lean.publish(per)
        return per * count / (time.perf_counter() - t)
    finally:
        lean.close()
        empty()


def drain(consumers: int, total: int, per: int, *, riding: bool = False) -> float:
    """Messages a second that ``consumers`` (a connection and thread each)
    claim ``per`` at a time and ack, each claim and each ack a statement and
    a commit of its own, from ``total`` waiting. With ``riding``, a batch's
    ack rides on the next claim instead (``ack_and_claim``)."""
    fill(total)

    def work(countdown: Countdown) -> None:
        lean = LeanSQL()
        held: list[int] = []
        try:
            while not countdown.over:
                if riding:
                    acked, held = len(held), lean.ack_and_claim(held, per)
                    countdown.done(acked)
                    continue
                ids = lean.claim(per)
                if ids:
                    countdown.done(lean.ack(ids))
            if held:  # claimed after the others finished the count
                lean.ack(held)
        finally:
            lean.close()

    try:
        return run_consumers(consumers, total, work)
    finally:
        empty()
