"""The raw SQL peer: the broker's own statements, straight through psycopg.

This is the floor of every mqadmin row: the same inserts, claims, deletes,
counter deltas and NOTIFY the broker runs, without the server in between, so
what separates mqadmin's numbers from these is the HTTP layer. It is also
the one module of the bench that runs the broker's statements
(``queues.backends.postgresql``) itself (``RawSQL``, ``fill_ready``): the
bench fills its queues through it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import orjson
import psycopg

from queues.backends.common import DELTA_INSERT_INTO, Statement
from queues.backends.postgresql import NOTIFY_CHANNEL, PostgreSQL
from queues.broker.publish import NewMessage, new_rows, sent_tally
from queues.models import COUNTER_FIELDS, Message, Queue, QueueStats, QueueStatsDelta

from .measure import BODY, BODY_BYTES, BenchError, Countdown, Measure, conninfo, run_consumers

MESSAGE_TABLE = Message._meta.db_table
DELTA_TABLE = QueueStatsDelta._meta.db_table
STATS_TABLE = QueueStats._meta.db_table

# For loading the big queue in one INSERT ... SELECT FROM generate_series.
_INSERT_COLUMNS = "queue_id, state, priority, body, headers, group_key, delivery_count, enqueued_at, visible_at, last_error"
_DELTA_INSERT = f"{DELTA_INSERT_INTO} VALUES (%s{', %s' * len(COUNTER_FIELDS)})"


def _delta(queue_id: int, **counts: int) -> list[Any]:
    return [queue_id, *(counts.get(f, 0) for f in COUNTER_FIELDS)]


class RawSQL:
    """The broker's own PostgreSQL statements (the backend's named ones),
    run over one autocommit psycopg connection: a send is one
    statement (messages, counter delta, NOTIFY), a receive one (promote due
    delayed messages and claim, with their deltas), an ack one (delete with its
    deltas), and a receive that carries the previous batch's acks one too.
    What separates mqadmin's numbers from these is the HTTP layer:
    the server, Django, auth, validation, JSON, and the client's side of it."""

    sql = PostgreSQL()

    def __init__(self, conninfo: str, queues: dict[int, Queue]) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.queues = queues  # loaded beforehand: consumer threads stay off the ORM

    def close(self) -> None:
        self.conn.close()

    def queue(self, queue_id: int) -> Queue:
        return self.queues[queue_id]

    def publish(self, queue_id: int, n: int, body: bytes = BODY_BYTES) -> list[int]:
        queue = self.queue(queue_id)
        rows = new_rows(queue, [NewMessage(body=body)], time.time()) * n
        row = self.conn.execute(*self.sql.send(queue.id, rows, *sent_tally(queue, rows).statements())).fetchone()
        assert row is not None
        return sorted(row[0])

    def claim(self, queue_id: int, n: int) -> list[tuple[int, str]]:
        return self.ack_and_claim(queue_id, [], n)[0]

    def ack_and_claim(self, queue_id: int, held: list[tuple[int, str]], n: int) -> tuple[list[tuple[int, str]], int]:
        """Ack ``held`` (none: a plain claim) and claim up to ``n``, in one
        statement as the broker's ``ack_and_receive`` does: (id, token) of
        the claimed, and how many were acked."""
        got = self.sql.split_receive(self.conn.execute(*self.receive_statement(queue_id, held, n)).fetchall())
        return [(r[0], r[7]) for r in got.claimed], len(got.acked)

    def receive_statement(self, queue_id: int, held: list[tuple[int, str]], n: int) -> Statement:
        """The broker's receive of up to ``n``, carrying the acks of ``held``."""
        now = time.time()
        acks = sorted(held) or None
        return self.sql.receive(self.queue(queue_id), now=now, expires=now + 30, max_messages=n, consumer_id=None, acks=acks)

    def ack_statement(self, queue_id: int, rows: list[tuple[int, str]]) -> Statement:
        return self.sql.ack(queue_id, sorted(rows))

    def ack(self, queue_id: int, rows: list[tuple[int, str]]) -> int:
        return len(self.conn.execute(*self.ack_statement(queue_id, rows)).fetchall())


def fill_ready(queue_id: int, n: int) -> None:
    """``n`` ready messages more in a queue, in one INSERT ... SELECT FROM
    generate_series, with their counter delta."""
    now = time.time()
    with psycopg.connect(conninfo()) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {MESSAGE_TABLE} ({_INSERT_COLUMNS}) "
            f"SELECT %s, 'ready', 0, %s, '{{}}', '', 0, %s, %s, '' FROM generate_series(1, %s)",
            [queue_id, BODY_BYTES.decode(), now, now, n],
        )
        cur.execute(_DELTA_INSERT, _delta(queue_id, ready=n, sent_total=n))


# --------------------------------------------------------------------------- #
# The peer's rounds
# --------------------------------------------------------------------------- #


class Host(Protocol):
    """What the raw SQL peer uses of the bench: its queues, filled and
    emptied around each round, and the loop that times a send's way to a
    consumer."""

    queue_ids: dict[str, int]

    def raw(self) -> RawSQL: ...

    def prefill(self, name: str, n: int) -> None: ...

    def empty(self, name: str) -> None: ...

    def latency_loop(
        self, n: int, consumer: Callable[[], None], stop: threading.Event, arrived: threading.Event, got: dict[int, float], send: Callable[[Any, int], object]
    ) -> list[float]: ...


def produce(bench: Host, per: int, count: int) -> float:
    raw = bench.raw()
    try:
        t = time.perf_counter()
        for _ in range(count):
            raw.publish(bench.queue_ids["raw"], per)
        return per * count / (time.perf_counter() - t)
    finally:
        raw.close()
        bench.empty("raw")


def drain(bench: Host, name: str, consumers: int, total: int, per: int, *, fill: bool = True) -> float:
    if fill:
        bench.prefill(name, total)
    qid = bench.queue_ids[name]

    def work(countdown: Countdown) -> None:
        # As mqadmin's consumers: a batch's acks ride on the next claim.
        raw = bench.raw()
        held: list[tuple[int, str]] = []
        try:
            while not countdown.over:
                held, acked = raw.ack_and_claim(qid, held, per)
                countdown.done(acked)
        finally:
            if held:  # claimed after the others finished the count
                raw.ack(qid, held)
            raw.close()

    try:
        return run_consumers(consumers, total, work)
    finally:
        if fill:
            bench.empty(name)


def drain_measure(bench: Host, consumers: int, total: int, per: int, *, with_statement_costs: bool = False) -> Measure:
    """The raw SQL drain; with ``with_statement_costs``, what PostgreSQL
    alone spends on a message (in the note): the claim and the ack of a
    batch run as statements of their own, each timed with its commit."""
    rounds = partial(drain, bench, "raw", consumers, total, per)
    if not with_statement_costs:
        return Measure("raw", rounds)
    costs: list[tuple[float, float]] = []

    def claim_us() -> float:
        costs.append(statement_costs(bench, total, per))
        return costs[-1][0]

    return Measure(
        "raw",
        rounds,
        twins=(claim_us, lambda: costs[-1][1]),
        twin_note=f"(PostgreSQL alone, {per} a statement, each with its commit: " "claim {:.0f} µs + ack {:.0f} µs a message)",
    )


def statement_costs(bench: Host, total: int, per: int) -> tuple[float, float]:
    """Microseconds a message of the claim of ``per`` and of their ack,
    each its own statement (medians over a drain of ``total``, full
    batches only): the floor under every receive + ack, whatever runs
    the statements."""
    bench.prefill("raw", total)
    qid = bench.queue_ids["raw"]
    raw = bench.raw()
    claims: list[float] = []
    acks: list[float] = []
    try:
        while True:
            started = time.perf_counter()
            rows = raw.claim(qid, per)
            claimed = time.perf_counter()
            if not rows:
                break
            raw.ack(qid, rows)
            if len(rows) == per:
                claims.append((claimed - started) / per * 1e6)
                acks.append((time.perf_counter() - claimed) / per * 1e6)
    finally:
        raw.close()
        bench.empty("raw")
    if not claims:
        raise BenchError(f"no full batch of {per} claimed from {total} messages")
    return statistics.median(claims), statistics.median(acks)


def latency(bench: Host, n: int) -> list[float]:
    """A consumer LISTENing for the broker's NOTIFY, claiming on each."""
    qid = bench.queue_ids["raw"]
    got: dict[int, float] = {}
    arrived = threading.Event()
    stop = threading.Event()
    producer = bench.raw()

    def consumer() -> None:
        listen = psycopg.connect(conninfo(), autocommit=True)
        raw = bench.raw()
        try:
            listen.execute(f"LISTEN {NOTIFY_CHANNEL}")
            while not stop.is_set():
                for _ in listen.notifies(timeout=0.5, stop_after=1):
                    rows = raw.claim(qid, 1)
                    if rows:
                        with raw.conn.cursor() as cur:
                            cur.execute(f"SELECT body FROM {MESSAGE_TABLE} WHERE id = %s", [rows[0][0]])
                            row = cur.fetchone()
                            assert row is not None  # we hold its lease: nobody else deletes it
                            body = orjson.loads(row[0])
                        got[body["i"]] = time.perf_counter()
                        arrived.set()
                        raw.ack(qid, rows)
        finally:
            listen.close()
            raw.close()

    try:
        return bench.latency_loop(n, consumer, stop, arrived, got, lambda api, i: producer.publish(qid, 1, orjson.dumps(BODY | {"i": i})))
    finally:
        producer.close()
        bench.empty("raw")
