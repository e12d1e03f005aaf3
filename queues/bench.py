"""``mq bench``: mqadmin side by side with what users would pick instead.

Each scenario runs for mqadmin over its real HTTP API (a ``mq serve`` this
module starts on a free port) and for the peers through their usual clients,
on this machine, in the same run, with the same ~200-byte JSON bodies:

* **raw SQL**: the very statements the broker runs (insert, claim, delete,
  counter delta, NOTIFY), sent straight through psycopg: the floor, i.e. what
  the HTTP layer costs us;
* **RabbitMQ** through pika: durable queue, persistent messages;
* **Procrastinate** on the same PostgreSQL, in a schema of its own.

A peer that is not there is reported as skipped, with the reason. The result
is one table, printed and written to ``bench-results/latest.{json,md}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import psycopg
from django.conf import settings
from django.db import connection

from . import broker
from .backends import NOTIFY_CHANNEL
from .models import COUNTER_FIELDS, Message, Queue, QueueStats, QueueStatsDelta, Token

MESSAGE_TABLE = Message._meta.db_table
DELTA_TABLE = QueueStatsDelta._meta.db_table
STATS_TABLE = QueueStats._meta.db_table
RESULTS_DIR = Path(settings.BASE_DIR) / "bench-results"
PREFIX = "bench-"
# The window of row 4b: messages a consumer has delivered ahead of the one it handles.
PREFETCH = 10
# Batches a producer's publish stream has on their way, unanswered, at most.
PUBLISH_WINDOW = 8
# In the latency scenario: mqadmin with its consumer on a consume stream.
STREAMED = "mqadmin_stream"
RABBIT_QUEUE = "mqbench"
PROCRASTINATE_SCHEMA = "procrastinate_bench"

# About 200 bytes of JSON, like a small job or event.
BODY: dict[str, Any] = {
    "order": 123456,
    "customer": "c-000042",
    "items": [{"sku": "pizza-margherita", "qty": 2}, {"sku": "lemonade", "qty": 1}],
    "note": "ring twice, the bell is broken",
    "at": "2026-11-28T05:00:00Z",
    "pad": "x" * 20,
}
BODY_BYTES = orjson.dumps(BODY)


class Output(Protocol):
    """Where the table goes: a text stream (stdout, a management command's
    ``self.stdout``)."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class BenchError(Exception):
    """The bench cannot run here (e.g. not on PostgreSQL)."""


@dataclass
class Sizes:
    """How much each scenario moves per round."""

    rounds: int
    batches: int  # batches of 100 per produce round
    singles: int  # single produces per round
    drain: int  # messages drained per receive+ack round
    trips: int  # receive-1 + ack-1 round trips per round
    windowed: int  # messages handled one at a time with a prefetch window, per round
    latency: int  # samples per latency round
    big: int  # messages waiting in scenario 6/7
    dash_queues: int

    def __str__(self) -> str:
        return (
            f"{self.rounds} rounds a scenario; a round sends {self.batches} batches of 100 and {self.singles:,} single "
            f"messages, drains {self.drain:,}, makes {self.trips:,} round trips, handles {self.windowed:,} through a window "
            f"and times {self.latency:,} sends; {self.big:,} waiting in rows 6-7, beside {self.dash_queues:,} queues"
        )

    @classmethod
    def for_run(cls, *, quick: bool, big: int | None, rounds: int | None) -> Sizes:
        if quick:
            s = cls(rounds=3, batches=10, singles=150, drain=1000, trips=150, windowed=1000, latency=60, big=300_000, dash_queues=1000)
        else:
            s = cls(rounds=5, batches=30, singles=300, drain=3000, trips=300, windowed=3000, latency=100, big=10_000_000, dash_queues=1000)
        if big is not None:
            s.big = big
        if rounds is not None:
            s.rounds = rounds
        return s

    @classmethod
    def tiny(cls) -> Sizes:
        """For the smoke test: every code path, almost no work."""
        return cls(rounds=1, batches=2, singles=5, drain=200, trips=5, windowed=20, latency=3, big=2000, dash_queues=5)


# --------------------------------------------------------------------------- #
# Measurements
# --------------------------------------------------------------------------- #


@dataclass
class Stat:
    """Rounds of one measurement: a rate (per second) or a duration (ms)."""

    values: list[float] = field(default_factory=list)
    unit: str = "msg/s"
    note: str = ""
    skipped: str | None = None
    p99: float | None = None  # latency only

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def cell(self) -> str:
        if self.skipped is not None:
            return f"skipped ({self.skipped})"
        if not self.values:
            return "—"
        note = f" {self.note}" if self.note else ""
        if self.p99 is not None:
            return f"p50 {self.median:.1f} ms, p99 {self.p99:.1f} ms{note}"
        lo, hi = min(self.values), max(self.values)
        fmt = (lambda v: f"{v:,.0f}") if self.unit == "msg/s" else (lambda v: f"{v:.1f}")
        spread = f" ({fmt(lo)}-{fmt(hi)})" if len(self.values) > 1 else ""
        return f"{fmt(self.median)} {self.unit}{spread}{note}"

    def to_json(self) -> dict[str, Any]:
        return {
            "median": None if not self.values else self.median,
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "values": self.values,
            "unit": self.unit,
            "note": self.note,
            "skipped": self.skipped,
            "p99": self.p99,
        }


def skipped(reason: str) -> Stat:
    return Stat(skipped=reason)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_stat(samples_ms: list[float], note: str = "") -> Stat:
    return Stat(values=[percentile(samples_ms, 50)], unit="ms", p99=percentile(samples_ms, 99), note=note)


def rounds_of(n: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(n)]


@dataclass
class Measure:
    """One peer's round of a scenario (a rate). ``twins`` are variants
    measured right after it in every round, whose medians ``twin_note``
    formats into the cell's note."""

    peer: str
    fn: Callable[[], float]
    note: str = ""
    twins: tuple[Callable[[], float], ...] = ()
    twin_note: str = ""


# --------------------------------------------------------------------------- #
# Raw SQL: the broker's own statements, straight through psycopg
# --------------------------------------------------------------------------- #

# For loading the big queue in one INSERT ... SELECT FROM generate_series.
_INSERT_COLUMNS = "queue_id, state, priority, body, headers, group_key, delivery_count, enqueued_at, visible_at, last_error"
_DELTA_INSERT = f"{broker.DELTA_INSERT_INTO} VALUES (%s{', %s' * len(COUNTER_FIELDS)})"


def _delta(queue_id: int, **counts: int) -> list[Any]:
    return [queue_id, *(counts.get(f, 0) for f in COUNTER_FIELDS)]


def vacuum_between_rounds(tables: list[str], *, always: bool = False) -> None:
    """Where autovacuum is off (as on the machines this ran on), do its work
    between rounds, for every peer that keeps its queue in PostgreSQL: each
    round deletes what it made, and a table that only gathers dead rows slows
    each round down more than the last, which is not what a database in
    production looks like. (Procrastinate's tables went without for a while:
    its worker fell from 357 to 150 jobs/s over three runs.)"""
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
        if always or (row is not None and row[0] != "on"):
            conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")


class RawSQL:
    """The broker's own PostgreSQL statements, built by the broker's own
    functions, run over one autocommit psycopg connection: a send is one
    statement (messages, counter delta, NOTIFY), a receive one (promote due
    delayed messages and claim, with their deltas), an ack one (delete with its
    deltas), and a receive that carries the previous batch's acks one too.
    What separates mqadmin's numbers from these is the HTTP layer:
    the server, Django, auth, validation, JSON, and the client's side of it."""

    def __init__(self, conninfo: str, queues: dict[int, Queue]) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.queues = queues  # loaded beforehand: consumer threads stay off the ORM

    def close(self) -> None:
        self.conn.close()

    def queue(self, queue_id: int) -> Queue:
        return self.queues[queue_id]

    def publish(self, queue_id: int, n: int, body: bytes = BODY_BYTES) -> list[int]:
        queue = self.queue(queue_id)
        rows = [broker.new_row(queue, broker.NewMessage(body=body), time.time())] * n
        row = self.conn.execute(*broker.insert_statement(rows, broker.sent_tally(queue, rows))).fetchone()
        assert row is not None
        return sorted(row[0])

    def claim(self, queue_id: int, n: int) -> list[tuple[int, str]]:
        return self.ack_and_claim(queue_id, [], n)[0]

    def ack_and_claim(self, queue_id: int, held: list[tuple[int, str]], n: int) -> tuple[list[tuple[int, str]], int]:
        """Ack ``held`` (none: a plain claim) and claim up to ``n``, in one
        statement as the broker's ``ack_and_receive`` does: (id, token) of
        the claimed, and how many were acked."""
        now = time.time()
        acks = [(mid, token, "") for mid, token in held] or None
        statement = broker.receive_statement(self.queue(queue_id), now, now + 30, n, acks=acks)
        rows, _, acked = broker.split_claim_rows(self.conn.execute(*statement).fetchall())
        return [(r[0], r[7]) for r in rows], len(acked)

    def ack(self, queue_id: int, rows: list[tuple[int, str]]) -> int:
        parsed = [(mid, token, "") for mid, token in rows]
        return len(self.conn.execute(*broker.ack_statement(queue_id, parsed)).fetchall())


# --------------------------------------------------------------------------- #
# The server under test
# --------------------------------------------------------------------------- #


def free_port() -> int:
    for _ in range(50):
        port = random.randint(18000, 19999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18000-19999")


def database_url() -> str:
    db = settings.DATABASES["default"]
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db.get('USER') or 'postgres'}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def conninfo(**extra: str) -> str:
    db = settings.DATABASES["default"]
    parts = {
        "host": db.get("HOST") or "127.0.0.1",
        "port": str(db.get("PORT") or 5432),
        "user": db.get("USER") or "postgres",
        "dbname": db["NAME"],
    }
    if db.get("PASSWORD"):
        parts["password"] = db["PASSWORD"]
    parts.update(extra)
    return " ".join(f"{k}='{v}'" for k, v in parts.items())


@contextmanager
def mq_server(log_path: Path, timeout: float = 30.0) -> Iterator[str]:
    """``manage.py mq serve`` on a random port, on this database; yields its URL."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONUNBUFFERED="1", DEBUG="off")
    # Enough for four consumers and a producer on two cores; a shared
    # PostgreSQL (max_connections 100) has other clients too.
    env.setdefault("MQ_DB_POOL_MAX", "10")
    # The benchmark vacuums between rounds itself (Bench.vacuum): the
    # monitor's stand-in for autovacuum would start one in the middle of one.
    env.setdefault("MQ_VACUUM", "off")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "mq", "serve", "--port", str(port)],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"mq serve exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mq serve did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Api:
    """mqadmin's own Python client (clients/python: the standard library's
    http.client, one kept-alive connection per thread), as an application
    or `mq worker` uses it."""

    def __init__(self, url: str, token: str) -> None:
        from mqclient import Client

        self.client = Client(url, token, timeout=60)

    def close(self) -> None:
        self.client.close()

    def send(self, queue: str, bodies: list[Any]) -> None:
        if len(bodies) == 1:
            self.client.send(queue, bodies[0])
        else:
            self.client.send_batch(queue, [{"body": b} for b in bodies])

    def receive(self, queue: str, n: int, wait: int = 0) -> list[dict[str, Any]]:
        return [{"body": m.body, "receipt": m.receipt} for m in self.client.receive(queue, max=n, wait=wait)]

    def ack(self, queue: str, receipts: list[str]) -> None:
        self.client.ack(queue, receipts)

    def ack_and_receive(self, queue: str, receipts: list[str], n: int) -> tuple[int, list[str]]:
        """Ack ``receipts`` and lease up to ``n`` in one call: (how many
        were acked, the new receipts)."""
        acked, messages = self.client.ack_and_receive(queue, receipts, max=n)
        return len(acked["acked"]), [m.receipt for m in messages]


# --------------------------------------------------------------------------- #
# Draining with several consumers
# --------------------------------------------------------------------------- #


class Countdown:
    """Shared by consumers: counts messages done, notes when the last one was."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.lock = threading.Lock()
        self.finished_at: float | None = None

    def done(self, n: int) -> bool:
        with self.lock:
            self.left -= n
            if self.left <= 0 and self.finished_at is None:
                self.finished_at = time.perf_counter()
            return self.left <= 0

    @property
    def over(self) -> bool:
        return self.left <= 0


def run_consumers(n: int, total: int, work: Callable[[Countdown], None], timeout: float = 300) -> float:
    """Run ``n`` consumers until ``total`` messages are done; messages per second."""
    countdown = Countdown(total)
    errors: list[BaseException] = []
    start = threading.Barrier(n + 1)

    def run() -> None:
        try:
            start.wait()
            work(countdown)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)
            countdown.done(total)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    if countdown.finished_at is None:
        raise RuntimeError(f"consumers did not finish {total} messages in {timeout}s")
    return total / (countdown.finished_at - began)


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


@dataclass
class Row:
    key: str
    scenario: str
    cells: dict[str, Stat]
    target: str = "—"
    met: str = "—"
    ratios: dict[str, float | None] = field(default_factory=dict)
    # Whether the raw SQL floor (the broker's statements without the server)
    # meets the same target against the same peer: a miss it shares is the
    # database's, not the layers above it.
    floor_met: str = "—"

    def met_cell(self) -> str:
        return self.met if self.floor_met == "—" else f"{self.met} (raw SQL: {self.floor_met})"


PEERS = ("mqadmin", "raw", "rabbitmq", "procrastinate")
HEADERS = ("mqadmin", "raw SQL", "RabbitMQ", "Procrastinate")


class Bench:
    def __init__(self, sizes: Sizes, *, out: Output, peers: tuple[str, ...] = PEERS[1:], results_dir: Path = RESULTS_DIR) -> None:
        self.s = sizes
        self.out = out
        self.peers = peers
        self.results_dir = results_dir
        self.stats: dict[str, dict[str, Stat]] = {}
        self.queue_ids: dict[str, int] = {}
        self.queues: dict[int, Queue] = {}
        self.token = ""
        self.url = ""
        self.rabbit_reason: str | None = None
        self.procrastinate_reason: str | None = None
        self.machine: dict[str, Any] = {}
        self.autovacuum = True

    # -- output ------------------------------------------------------------

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def put(self, key: str, peer: str, stat: Stat) -> None:
        self.stats.setdefault(key, {})[peer] = stat
        self.say(f"  {key:<24} {peer:<14} {stat.cell()}")

    def interleaved(self, key: str, measures: list[Measure]) -> None:
        """Every peer's rounds in turn (mqadmin, raw SQL, RabbitMQ,
        Procrastinate, then mqadmin again...): a slow spell of the shared
        machine hits them all alike, so the ratios hold where the absolute
        numbers move. A peer that fails is reported so, not fatal."""
        def all_of(m: Measure) -> list[float]:
            return [m.fn(), *(twin() for twin in m.twins)]

        results, failed = self.in_turns({m.peer: partial(all_of, m) for m in measures})
        for m in measures:
            if m.peer in failed:
                self.put(key, m.peer, skipped(failed[m.peer]))
                continue
            values = [value for value, *_ in results[m.peer]]
            twins = [statistics.median(round_[i] for round_ in results[m.peer]) for i in range(1, len(m.twins) + 1)]
            self.put(key, m.peer, Stat(values, note=m.twin_note.format(*twins) if m.twins else m.note))

    def in_turns[T](self, rounds: dict[str, Callable[[], T]]) -> tuple[dict[str, list[T]], dict[str, str]]:
        """Each peer's round in turn, ``self.s.rounds`` times: each peer's
        results, and why each peer that failed did (it runs no more)."""
        results: dict[str, list[T]] = {peer: [] for peer in rounds}
        failed: dict[str, str] = {}
        for _ in range(self.s.rounds):
            for peer, fn in rounds.items():
                if peer not in failed:
                    try:
                        results[peer].append(fn())
                    except Exception as exc:
                        failed[peer] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
        return results, failed

    # -- setup -------------------------------------------------------------

    def setup(self) -> None:
        if not connection.vendor == "postgresql":
            raise BenchError("mq bench needs PostgreSQL: set DATABASE_URL=postgres://... (make bench does)")
        with connection.cursor() as cur:
            cur.execute("SHOW synchronous_commit")
            sync = cur.fetchone()[0]
            cur.execute("SELECT version()")
            pg_version = cur.fetchone()[0].split(" on ")[0]
            cur.execute("SHOW autovacuum")
            self.autovacuum = cur.fetchone()[0] == "on"
        self.machine = machine_info() | {"postgresql": pg_version, "synchronous_commit": sync, "autovacuum": self.autovacuum}
        Token.objects.filter(name__startswith="bench-").delete()
        _, self.token = Token.issue(f"bench-{os.getpid()}", ["admin", "produce", "consume"], "*")
        for name in ("produce", "single", "drain", "trip", "latency", "small", "big", "raw"):
            queue, _ = broker.put_queue(PREFIX + name, {"visibility_timeout": 300, "max_deliveries": 0})
            self.queue_ids[name] = queue.id
            self.queues[queue.id] = queue
        for name in ("produce", "single", "drain", "trip", "latency", "small", "raw"):
            self.empty(name)

    def empty(self, name: str) -> None:
        broker.purge(Queue.objects.get(pk=self.queue_ids[name]))
        self.vacuum()

    def vacuum(self, *, full_scan: bool = False) -> None:
        vacuum_between_rounds([MESSAGE_TABLE, DELTA_TABLE, STATS_TABLE], always=full_scan)

    def raw(self) -> RawSQL:
        return RawSQL(conninfo(), self.queues)

    def prefill(self, name: str, n: int) -> None:
        raw = self.raw()
        try:
            for start in range(0, n, 1000):
                raw.publish(self.queue_ids[name], min(1000, n - start))
        finally:
            raw.close()

    # -- scenarios -----------------------------------------------------------

    def run(self) -> list[Row]:
        began = time.monotonic()
        self.setup()
        load_before = os.getloadavg()
        self.say(f"mq bench: {self.s}")
        self.say(f"machine: {machine_line(self.machine)}")
        self.rabbit_reason = rabbit_available() if "rabbitmq" in self.peers else "not selected"
        self.procrastinate_reason = procrastinate_available() if "procrastinate" in self.peers else "not selected"
        with mq_server(self.results_dir / "server.log") as url:
            self.url = url
            self.scenario_produce()
            self.scenario_drain()
            self.scenario_round_trip()
            self.scenario_latency()
            self.scenario_big()
        self.scenario_dashboard()
        self.machine["load_average_before"] = [round(x, 2) for x in load_before]
        self.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        self.machine["duration_s"] = round(time.monotonic() - began, 1)
        return self.rows()

    def scenario_produce(self) -> None:
        s = self.s
        self.say("1-2. produce")
        batch = [BODY] * 100

        def mq_batches() -> float:
            api = Api(self.url, self.token)
            try:
                t = time.perf_counter()
                for _ in range(s.batches):
                    api.send(PREFIX + "produce", batch)
                return s.batches * 100 / (time.perf_counter() - t)
            finally:
                api.close()
                self.empty("produce")

        def mq_singles() -> float:
            api = Api(self.url, self.token)
            try:
                t = time.perf_counter()
                for _ in range(s.singles):
                    api.send(PREFIX + "single", [BODY])
                return s.singles / (time.perf_counter() - t)
            finally:
                api.close()
                self.empty("single")

        def raw_produce(per: int, count: int) -> float:
            raw = self.raw()
            try:
                t = time.perf_counter()
                for _ in range(count):
                    raw.publish(self.queue_ids["raw"], per)
                return per * count / (time.perf_counter() - t)
            finally:
                raw.close()
                self.empty("raw")

        def mq_published(name: str, per: int, count: int) -> float:
            """Through a publish stream: PUBLISH_WINDOW batches unanswered at
            most, each answered after its commit."""
            from mqclient import Client

            messages = [{"body": BODY}] * per
            try:
                with Client(self.url, self.token, timeout=60).publisher(PREFIX + name, window=PUBLISH_WINDOW) as pub:
                    t = time.perf_counter()
                    for _ in range(count):
                        pub.send_batch(messages)
                    answers = pub.flush()
                    rate = per * count / (time.perf_counter() - t)
                refused = [a.error for a in answers if a.error is not None]
                if refused or len(answers) != count:
                    raise BenchError(f"publish stream: {len(answers)} answers, refused: {refused[:1]}")
                return rate
            finally:
                self.empty(name)

        batches = [
            Measure(
                "mqadmin",
                lambda: mq_published("produce", 100, s.batches),
                twins=(mq_batches,),
                twin_note=f"(publish stream, {PUBLISH_WINDOW} batches in flight; " "over HTTP, a request a batch: {:,.0f}/s)",
            )
        ]
        singles = [
            Measure(
                "mqadmin",
                mq_singles,
                twins=(lambda: mq_published("single", 1, s.singles),),
                twin_note=f"(a request each; on a publish stream, {PUBLISH_WINDOW} in flight: " "{:,.0f}/s)",
            )
        ]
        if "raw" in self.peers:
            batches.append(Measure("raw", lambda: raw_produce(100, s.batches)))
            singles.append(Measure("raw", lambda: raw_produce(1, s.singles)))
        if self.rabbit_reason is None:
            batches.append(Measure("rabbitmq", lambda: rabbit_publish(s.batches * 100, confirms=False), "(no confirms)"))
            singles.append(Measure("rabbitmq", lambda: rabbit_publish(s.singles, confirms=True), "(confirms)"))
        if self.procrastinate_reason is None:
            batches.append(Measure("procrastinate", lambda: procrastinate_defer(s.batches, 100), "(batch_defer)"))
            singles.append(Measure("procrastinate", lambda: procrastinate_defer(s.singles, 1), "(defer)"))
        self.interleaved("produce_batch", batches)
        self.interleaved("produce_single", singles)

    def mq_drain(self, name: str, consumers: int, total: int, per: int, *, separate_acks: bool = False) -> float:
        """Consumers lease ``per`` at a time and ack them all. Each receive
        carries the acks of the batch before it (one call a round), or, with
        ``separate_acks``, each batch is acked by a call of its own."""
        self.prefill(name, total)
        queue = PREFIX + name

        def work(countdown: Countdown) -> None:
            api = Api(self.url, self.token)
            held: list[str] = []
            try:
                while not countdown.over:
                    if separate_acks:
                        msgs = api.receive(queue, per)
                        if msgs:
                            api.ack(queue, [m["receipt"] for m in msgs])
                            countdown.done(len(msgs))
                        continue
                    acked, held = api.ack_and_receive(queue, held, per)
                    countdown.done(acked)
            finally:
                if held:  # leased after the others finished the count
                    api.ack(queue, held)
                api.close()

        try:
            return run_consumers(consumers, total, work)
        finally:
            self.empty(name)

    def raw_drain(self, name: str, consumers: int, total: int, per: int, *, fill: bool = True) -> float:
        if fill:
            self.prefill(name, total)
        qid = self.queue_ids[name]

        def work(countdown: Countdown) -> None:
            # As mqadmin's consumers: a batch's acks ride on the next claim.
            raw = self.raw()
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
                self.empty(name)

    def scenario_drain(self) -> None:
        s = self.s
        self.say("3. receive 100 + ack 100")
        for n in (1, 4):
            measures = [self.mq_drain_measure("drain", n, s.drain, 100)]
            if "raw" in self.peers:
                measures.append(self.raw_drain_measure(n, s.drain, 100, statement_costs=n == 1))
            if self.rabbit_reason is None:
                measures.append(Measure("rabbitmq", partial(rabbit_drain, n, s.drain, prefetch=100), "(manual ack)"))
            if self.procrastinate_reason is None:
                # A worker takes one job at a time: it drains a smaller batch.
                measures.append(Measure("procrastinate", partial(procrastinate_worker, s.trips, n), f"(worker, concurrency {n})"))
            self.interleaved(f"drain_{n}", measures)

    def raw_drain_measure(self, consumers: int, total: int, per: int, *, statement_costs: bool = False) -> Measure:
        """The raw SQL drain; with ``statement_costs``, what PostgreSQL
        alone spends on a message (in the note): the claim and the ack of a
        batch run as statements of their own, each timed with its commit."""
        drain = partial(self.raw_drain, "raw", consumers, total, per)
        if not statement_costs:
            return Measure("raw", drain)
        costs: list[tuple[float, float]] = []

        def claim_us() -> float:
            costs.append(self.statement_costs(total, per))
            return costs[-1][0]

        return Measure(
            "raw",
            drain,
            twins=(claim_us, lambda: costs[-1][1]),
            twin_note=f"(PostgreSQL alone, {per} a statement, each with its commit: " "claim {:.0f} µs + ack {:.0f} µs a message)",
        )

    def statement_costs(self, total: int, per: int) -> tuple[float, float]:
        """Microseconds a message of the claim of ``per`` and of their ack,
        each its own statement (medians over a drain of ``total``, full
        batches only): the floor under every receive + ack, whatever runs
        the statements."""
        self.prefill("raw", total)
        qid = self.queue_ids["raw"]
        raw = self.raw()
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
            self.empty("raw")
        if not claims:
            raise BenchError(f"no full batch of {per} claimed from {total} messages")
        return statistics.median(claims), statistics.median(acks)

    def mq_drain_measure(self, name: str, consumers: int, total: int, per: int) -> Measure:
        """The drain with acks riding on receives; as its twins (in the
        note), with an ack call of its own per batch, and on consume streams
        (twice the batch in flight, so the next is on its way while one is
        acked, as RabbitMQ's consumers here)."""
        return Measure(
            "mqadmin",
            lambda: self.mq_drain(name, consumers, total, per),
            twins=(
                lambda: self.mq_drain(name, consumers, total, per, separate_acks=True),
                lambda: self.mq_stream(name, consumers, total, prefetch=2 * per, ack_every=per),
            ),
            twin_note=(
                "(acks ride on the next receive; with an ack call of their own: {:,.0f}/s; "
                f"on consume streams, prefetch {2 * per}, acks per {per}: " "{:,.0f}/s)"
            ),
        )

    def mq_stream(self, name: str, consumers: int, total: int, *, prefetch: int, ack_every: int = 1) -> float:
        """Consumers on consume streams (the client's websocket): the server
        pushes up to ``prefetch`` unacked; each acks every ``ack_every``."""
        self.prefill(name, total)
        queue = PREFIX + name

        def work(countdown: Countdown) -> None:
            from mqclient import Client

            with Client(self.url, self.token, timeout=60).consume(queue, prefetch=prefetch) as stream:
                done: list[str] = []
                while not countdown.over:
                    for message in stream.receive(timeout=0.05):
                        done.append(message.receipt)
                        if len(done) >= ack_every:
                            stream.ack(done)
                            countdown.done(len(done))
                            done = []
                if done:
                    stream.ack(done)

        try:
            return run_consumers(consumers, total, work)
        finally:
            self.empty(name)

    def scenario_round_trip(self) -> None:
        s = self.s
        self.say("4. one message per round trip")
        measures = [
            Measure(
                "mqadmin",
                lambda: self.mq_stream("trip", 1, s.trips, prefetch=1),
                twins=(
                    lambda: self.mq_drain("trip", 1, s.trips, 1),
                    lambda: self.mq_drain("trip", 1, s.trips, 1, separate_acks=True),
                ),
                twin_note=(
                    "(consume stream, prefetch 1; over HTTP, the ack riding on the next receive: {:,.0f}/s, "
                    "with an ack call of its own: {:,.0f}/s)"
                ),
            )
        ]
        if "raw" in self.peers:
            measures.append(Measure("raw", lambda: self.raw_drain("raw", 1, s.trips, 1)))
        if self.rabbit_reason is None:
            measures.append(Measure("rabbitmq", lambda: rabbit_drain(1, s.trips, prefetch=1), "(prefetch 1)"))
        if self.procrastinate_reason is None:
            measures.append(Measure("procrastinate", lambda: procrastinate_worker(s.trips, 1), "(worker)"))
        self.interleaved("round_trip", measures)
        # One message at a time, each acked on its own, with a window of
        # PREFETCH delivered ahead (RabbitMQ's consumers are used so).
        # Procrastinate's worker has no window: its cell is row 4's.
        self.say(f"4b. one message at a time, prefetch {PREFETCH}")
        measures = [Measure("mqadmin", lambda: self.mq_stream("trip", 1, s.windowed, prefetch=PREFETCH), f"(consume stream, prefetch {PREFETCH})")]
        if self.rabbit_reason is None:
            measures.append(
                Measure("rabbitmq", lambda: rabbit_drain(1, s.windowed, prefetch=PREFETCH, ack_every=1), f"(prefetch {PREFETCH}, ack each)")
            )
        self.interleaved("windowed", measures)
        worker = self.stats.get("round_trip", {}).get("procrastinate")
        if worker is not None:
            self.stats["windowed"]["procrastinate"] = replace(worker, note="(worker: no prefetch; row 4's)")

    def scenario_latency(self) -> None:
        s = self.s
        self.say("5. send -> long-polling consumer")
        peers: list[tuple[str, Callable[[int], list[float]], str]] = [
            ("mqadmin", self.mq_latency, ""),
            (STREAMED, partial(self.mq_latency, stream=True), ""),
        ]
        if "raw" in self.peers:
            peers.append(("raw", self.raw_latency, "(LISTEN/NOTIFY + claim)"))
        if self.rabbit_reason is None:
            peers.append(("rabbitmq", rabbit_latency, "(push)"))
        if self.procrastinate_reason is None:
            peers.append(("procrastinate", procrastinate_latency, "(worker)"))
        # Rounds of sends for each peer in turn, as the rates are measured:
        # a slow spell of the machine lands in every peer's percentiles alike.
        samples, failed = self.in_turns({peer: partial(measure, s.latency) for peer, measure, _ in peers})
        # The consume stream's percentiles go in mqadmin's note: the row is
        # about a long-polling consumer; a stream is a pushed one.
        streamed = [ms for one in samples.pop(STREAMED, []) for ms in one]
        peers = [p for p in peers if p[0] != STREAMED]
        if streamed and "mqadmin" not in failed:
            pushed = latency_stat(streamed)
            peers[0] = ("mqadmin", self.mq_latency, f"(long poll; on a consume stream: p50 {pushed.median:.1f} ms, p99 {pushed.p99:.1f} ms)")
        for peer, _measure, note in peers:
            if peer in failed:
                self.put("latency", peer, skipped(failed[peer]))
            else:
                self.put("latency", peer, latency_stat([ms for one in samples[peer] for ms in one], note))

    def mq_latency(self, n: int, *, stream: bool = False) -> list[float]:
        """Long-polling consumer, or with ``stream`` one on a consume stream
        (prefetch 1)."""
        queue = PREFIX + "latency"
        got: dict[int, float] = {}
        arrived = threading.Event()
        stop = threading.Event()

        def arrive(i: int) -> None:
            got[i] = time.perf_counter()
            arrived.set()

        def polling() -> None:
            api = Api(self.url, self.token)
            try:
                while not stop.is_set():
                    msgs = api.receive(queue, 1, wait=2)
                    for m in msgs:
                        arrive(m["body"]["i"])
                    if msgs:
                        api.ack(queue, [m["receipt"] for m in msgs])
            finally:
                api.close()

        def streaming() -> None:
            from mqclient import Client

            with Client(self.url, self.token, timeout=60).consume(queue, prefetch=1) as consumed:
                while not stop.is_set():
                    for m in consumed.receive(timeout=0.2):
                        arrive(m.body["i"])
                        consumed.ack([m.receipt])

        consumer = streaming if stream else polling
        return self._latency_loop(n, consumer, stop, arrived, got, lambda api, i: api.send(queue, [BODY | {"i": i}]))

    def _latency_loop(self, n: int, consumer: Callable[[], None], stop: threading.Event, arrived: threading.Event, got: dict[int, float], send: Callable[[Any, int], object]) -> list[float]:
        thread = threading.Thread(target=consumer, daemon=True)
        thread.start()
        api = Api(self.url, self.token)
        samples = []
        try:
            time.sleep(0.3)
            for i in range(n):
                arrived.clear()
                t = time.perf_counter()
                send(api, i)
                if not arrived.wait(10):
                    raise RuntimeError(f"message {i} never reached the consumer")
                samples.append((got[i] - t) * 1000)
                time.sleep(0.02)  # the consumer is back in its long poll
        finally:
            stop.set()
            api.close()
            thread.join(15)
        self.empty("latency")
        return samples

    def raw_latency(self, n: int) -> list[float]:
        qid = self.queue_ids["raw"]
        got: dict[int, float] = {}
        arrived = threading.Event()
        stop = threading.Event()
        producer = self.raw()

        def consumer() -> None:
            listen = psycopg.connect(conninfo(), autocommit=True)
            raw = self.raw()
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
            return self._latency_loop(n, consumer, stop, arrived, got, lambda api, i: producer.publish(qid, 1, orjson.dumps(BODY | {"i": i})))
        finally:
            producer.close()
            self.empty("raw")

    # -- 6. claim with N waiting -------------------------------------------------

    def load_big(self) -> None:
        """Top the big queue up to N ready messages, in one statement."""
        qid = self.queue_ids["big"]
        counts = broker.queue_counts([qid])[qid]
        missing = self.s.big - counts.ready
        if missing <= 0:
            self.say(f"6. {counts.ready:,} messages already waiting in {PREFIX}big")
            return
        self.say(f"6. loading {missing:,} messages into {PREFIX}big (INSERT ... SELECT FROM generate_series)")
        t = time.perf_counter()
        now = time.time()
        with psycopg.connect(conninfo()) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO {MESSAGE_TABLE} ({_INSERT_COLUMNS}) "
                f"SELECT %s, 'ready', 0, %s, '{{}}', '', 0, %s, %s, '' FROM generate_series(1, %s)",
                [qid, BODY_BYTES.decode(), now, now, missing],
            )
            cur.execute(_DELTA_INSERT, _delta(qid, ready=missing, sent_total=missing))
        self.vacuum(full_scan=True)
        self.say(f"   loaded in {time.perf_counter() - t:.0f}s")

    def scenario_big(self) -> None:
        s = self.s
        try:
            self.load_big()
        except Exception as exc:
            self.put("claim_big", "mqadmin", skipped(f"load failed: {exc}"))
            return
        mq_small, mq_big, raw_small, raw_big = [], [], [], []
        for _ in range(s.rounds):
            # Alternate, so drift on a shared machine hits both alike.
            mq_small.append(self.mq_drain("small", 1, s.drain, 100))
            mq_big.append(self.mq_big_drain(s.drain))
            if "raw" in self.peers:
                raw_small.append(self.raw_drain("small", 1, s.drain, 100))
                raw_big.append(self.raw_drain("big", 1, s.drain, 100, fill=False))
        self.put("claim_small", "mqadmin", Stat(mq_small))
        self.put("claim_big", "mqadmin", Stat(mq_big))
        if raw_small:
            self.put("claim_small", "raw", Stat(raw_small))
            self.put("claim_big", "raw", Stat(raw_big))

    def mq_big_drain(self, total: int) -> float:
        queue = PREFIX + "big"

        def work(countdown: Countdown) -> None:
            api = Api(self.url, self.token)
            held: list[str] = []
            try:
                while not countdown.over:
                    acked, held = api.ack_and_receive(queue, held, 100)
                    if not held:
                        raise RuntimeError(f"{queue} ran dry")
                    countdown.done(acked)
            finally:
                if held:
                    api.ack(queue, held)
                api.close()

        return run_consumers(1, total, work)

    # -- 7. dashboard tick ----------------------------------------------------------

    def scenario_dashboard(self) -> None:
        s = self.s
        self.say(f"7. dashboard tick, {s.dash_queues} queues")
        have = Queue.objects.filter(name__startswith=PREFIX + "dash-").count()
        if have < s.dash_queues:
            names = [f"{PREFIX}dash-{i:04d}" for i in range(s.dash_queues)]
            existing = set(Queue.objects.filter(name__in=names).values_list("name", flat=True))
            for name in names:
                if name not in existing:
                    broker.put_queue(name, {})
        n_queues = Queue.objects.count()

        def counts_ms() -> float:
            with db_timer() as timer:
                broker.queue_counts()  # every queue
            return timer.ms

        broker.queue_counts()  # warm
        self.put("dashboard_counts", "mqadmin", Stat(rounds_of(max(3, s.rounds), counts_ms), unit="ms DB", note=f"({n_queues} queues)"))
        try:
            from dashboard.publisher import Aggregator
        except ImportError as exc:
            self.put("dashboard_tick", "mqadmin", skipped(f"no aggregator: {exc}"))
            return
        aggregator = Aggregator()

        def tick_ms() -> float:
            with db_timer() as timer:
                aggregator.tick(time.time())
            return timer.ms

        tick_ms()
        self.put("dashboard_tick", "mqadmin", Stat(rounds_of(max(3, s.rounds), tick_ms), unit="ms DB", note="(aggregator tick)"))
        # Gone again, so the next run's server does not carry them.
        Queue.objects.filter(name__startswith=PREFIX + "dash-").delete()

    # -- the table ---------------------------------------------------------------------

    def rows(self) -> list[Row]:
        st = self.stats

        def get(key: str, peer: str) -> Stat | None:
            stat = st.get(key, {}).get(peer)
            return stat if stat is not None and stat.skipped is None and stat.values else None

        def ratio(a: Stat | None, b: Stat | None) -> float | None:
            return a.median / b.median if a and b and b.median else None

        def cells(key: str) -> dict[str, Stat]:
            out = {}
            for peer in PEERS:
                stat = st.get(key, {}).get(peer)
                if stat is None and peer == "rabbitmq" and self.rabbit_reason:
                    stat = skipped(self.rabbit_reason)
                if stat is None and peer == "procrastinate" and self.procrastinate_reason:
                    stat = skipped(self.procrastinate_reason)
                out[peer] = stat or Stat()
            return out

        def verdict(*checks: object) -> str:
            # Each check is falsy (missed), truthy (met) or None (not measured).
            if any(c is None for c in checks):
                return "?"
            return "yes" if all(checks) else "no"

        rows: list[Row] = []
        mq = lambda k: get(k, "mqadmin")  # noqa: E731
        raw = lambda k: get(k, "raw")  # noqa: E731

        r_raw = ratio(mq("produce_batch"), raw("produce_batch"))
        r_rmq = ratio(mq("produce_batch"), get("produce_batch", "rabbitmq"))
        f_rmq = ratio(raw("produce_batch"), get("produce_batch", "rabbitmq"))
        rows.append(Row("produce_batch", "1. produce, batches of 100", cells("produce_batch"),
                        "≥ 0.6 x raw SQL and > RabbitMQ (no confirms)",
                        verdict(r_raw and r_raw >= 0.6, r_rmq and r_rmq > 1), {"vs_raw": r_raw, "vs_rabbitmq": r_rmq},
                        verdict(f_rmq and f_rmq > 1)))
        rows.append(Row("produce_single", "2. produce, one per request", cells("produce_single"),
                        ratios={"vs_raw": ratio(mq("produce_single"), raw("produce_single"))}))
        for n in (1, 4):
            key = f"drain_{n}"
            r_raw = ratio(mq(key), raw(key))
            r_rmq = ratio(mq(key), get(key, "rabbitmq"))
            f_rmq = ratio(raw(key), get(key, "rabbitmq"))
            rows.append(Row(key, f"3. receive 100 + ack 100, {n} consumer{'s' if n > 1 else ''}", cells(key),
                            "≥ 0.5 x raw SQL and > RabbitMQ (manual ack)",
                            verdict(r_raw and r_raw >= 0.5, r_rmq and r_rmq > 1),
                            {"vs_raw": r_raw, "vs_rabbitmq": r_rmq, "raw_vs_rabbitmq": f_rmq}, verdict(f_rmq and f_rmq > 1)))
        r_pro = ratio(mq("round_trip"), get("round_trip", "procrastinate"))
        f_pro = ratio(raw("round_trip"), get("round_trip", "procrastinate"))
        rows.append(Row("round_trip", "4. one message per round trip", cells("round_trip"),
                        "> 3 x Procrastinate worker", verdict(r_pro and r_pro > 3),
                        {"vs_procrastinate": r_pro, "vs_raw": ratio(mq("round_trip"), raw("round_trip")), "raw_vs_procrastinate": f_pro},
                        verdict(f_pro and f_pro > 3)))
        if "windowed" in st:
            r_win = ratio(mq("windowed"), get("round_trip", "procrastinate"))
            rows.append(Row("windowed", f"4b. one message at a time, acked one by one, prefetch {PREFETCH}", cells("windowed"),
                            "> 3 x Procrastinate worker", verdict(r_win and r_win > 3),
                            {"vs_procrastinate": r_win, "vs_rabbitmq": ratio(mq("windowed"), get("windowed", "rabbitmq"))}))
        lat, raw_lat = mq("latency"), raw("latency")
        rows.append(Row("latency", "5. send → long-polling consumer", cells("latency"),
                        "p50 < 5 ms, p99 < 20 ms",
                        verdict(lat and lat.median < 5, lat and (lat.p99 or 0) < 20),
                        {"p50_vs_5ms": lat.median / 5 if lat else None, "p99_vs_20ms": (lat.p99 or 0) / 20 if lat else None},
                        verdict(raw_lat and raw_lat.median < 5, raw_lat and (raw_lat.p99 or 0) < 20)))
        big, small = mq("claim_big"), mq("claim_small")
        r_big = ratio(big, small)
        big_cells = cells("claim_big")
        for peer in ("mqadmin", "raw"):
            b, sm = get("claim_big", peer), get("claim_small", peer)
            if b and sm:
                b.note = f"(empty-ish queue: {sm.median:,.0f}/s → {b.median / sm.median:.2f}x)"
        rows.append(Row("claim_big", f"6. receive 100 + ack 100 with {self.s.big:,} waiting", big_cells,
                        "≥ 0.8 x the empty-ish queue", verdict(r_big and r_big >= 0.8), {"vs_empty": r_big}))
        for key, label in (("dashboard_counts", "queue_counts()"), ("dashboard_tick", "aggregator tick")):
            d = mq(key)
            c = cells(key)
            if key in st:
                rows.append(Row(key, f"7. dashboard: {label}, {self.s.dash_queues:,} queues, {self.s.big:,} stored", c,
                                "< 50 ms DB time", verdict(d and d.median < 50), {"vs_50ms": d.median / 50 if d else None}))
        return rows


# --------------------------------------------------------------------------- #
# Database time
# --------------------------------------------------------------------------- #


class _DBTimer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - t

    @property
    def ms(self) -> float:
        return self.seconds * 1000


@contextmanager
def db_timer() -> Iterator[_DBTimer]:
    """Time spent in the database (statements, round trips, fetches)."""
    timer = _DBTimer()
    with connection.execute_wrapper(timer):
        yield timer


# --------------------------------------------------------------------------- #
# RabbitMQ (pika)
# --------------------------------------------------------------------------- #

RABBIT_PARAMS: dict[str, Any] = {"host": "127.0.0.1", "port": 5672}


def _rabbit() -> Any:
    import pika

    params = pika.ConnectionParameters(
        **RABBIT_PARAMS, credentials=pika.PlainCredentials("guest", "guest"), connection_attempts=1, socket_timeout=3
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(RABBIT_QUEUE, durable=True)
    return conn, ch


def rabbit_available() -> str | None:
    try:
        import pika  # noqa: F401
    except ImportError:
        return "pika not installed"
    try:
        conn, ch = _rabbit()
        ch.queue_purge(RABBIT_QUEUE)
        conn.close()
    except Exception as exc:
        return f"RabbitMQ unreachable at {RABBIT_PARAMS['host']}:{RABBIT_PARAMS['port']}: {type(exc).__name__}"
    return None


def rabbit_version() -> str | None:
    try:
        conn, _ = _rabbit()
        version = conn._impl.server_properties.get("version")
        conn.close()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:
        return None


def _persistent() -> Any:
    import pika

    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


def rabbit_publish(n: int, *, confirms: bool) -> float:
    """Publish ``n`` persistent messages; with confirms, each waits for its confirm."""
    conn, ch = _rabbit()
    try:
        if confirms:
            ch.confirm_delivery()
        props = _persistent()
        t = time.perf_counter()
        for _ in range(n):
            ch.basic_publish("", RABBIT_QUEUE, BODY_BYTES, props)
        # A synchronous call behind the publishes: they have been handled.
        ch.queue_declare(RABBIT_QUEUE, durable=True, passive=True)
        return n / (time.perf_counter() - t)
    finally:
        ch.queue_purge(RABBIT_QUEUE)
        conn.close()


def rabbit_fill(n: int) -> None:
    conn, ch = _rabbit()
    try:
        ch.queue_purge(RABBIT_QUEUE)
        props = _persistent()
        for _ in range(n):
            ch.basic_publish("", RABBIT_QUEUE, BODY_BYTES, props)
        for _ in range(100):
            if ch.queue_declare(RABBIT_QUEUE, durable=True, passive=True).method.message_count >= n:
                return
            time.sleep(0.05)
    finally:
        conn.close()


def rabbit_drain(consumers: int, total: int, *, prefetch: int, ack_every: int | None = None) -> float:
    """Consume with manual acks: one ack per ``ack_every`` messages
    (multiple=True; by default one per ``prefetch``)."""
    ack_every = ack_every or prefetch
    rabbit_fill(total)

    def work(countdown: Countdown) -> None:
        conn, ch = _rabbit()
        try:
            ch.basic_qos(prefetch_count=prefetch)
            pending = 0
            last = None
            for method, _props, _body in ch.consume(RABBIT_QUEUE, inactivity_timeout=0.05):
                if method is None:
                    if countdown.over:
                        break
                    continue
                pending += 1
                last = method.delivery_tag
                if pending >= ack_every:
                    ch.basic_ack(last, multiple=True)
                    countdown.done(pending)
                    pending = 0
                    if countdown.over:
                        break
            if pending and last is not None:
                ch.basic_ack(last, multiple=True)
                countdown.done(pending)
            ch.cancel()
        finally:
            conn.close()

    try:
        return run_consumers(consumers, total, work)
    finally:
        conn, ch = _rabbit()
        ch.queue_purge(RABBIT_QUEUE)
        conn.close()


def rabbit_latency(n: int) -> list[float]:
    got: dict[int, float] = {}
    arrived = threading.Event()
    stop = threading.Event()
    ready = threading.Event()

    def consumer() -> None:
        conn, ch = _rabbit()
        try:
            ch.basic_qos(prefetch_count=1)
            ready.set()
            for method, _props, body in ch.consume(RABBIT_QUEUE, inactivity_timeout=0.2):
                if method is not None:
                    got[orjson.loads(body)["i"]] = time.perf_counter()
                    arrived.set()
                    ch.basic_ack(method.delivery_tag)
                if stop.is_set():
                    break
            ch.cancel()
        finally:
            conn.close()

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    ready.wait(10)
    conn, ch = _rabbit()
    props = _persistent()
    samples = []
    try:
        time.sleep(0.3)
        for i in range(n):
            arrived.clear()
            t = time.perf_counter()
            ch.basic_publish("", RABBIT_QUEUE, orjson.dumps(BODY | {"i": i}), props)
            if not arrived.wait(10):
                raise RuntimeError(f"message {i} never reached the consumer")
            samples.append((got[i] - t) * 1000)
            time.sleep(0.02)
    finally:
        stop.set()
        conn.close()
        thread.join(10)
    return samples


# --------------------------------------------------------------------------- #
# Procrastinate, on the same PostgreSQL, in a schema of its own
# --------------------------------------------------------------------------- #

_procrastinate_done: list[float] = []
_procrastinate_event: asyncio.Event | None = None


def _procrastinate_app() -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=conninfo(options=f"-c search_path={PROCRASTINATE_SCHEMA}"), min_size=1, max_size=8
        )
    )

    @app.task(name="bench_noop", queue="bench")
    async def bench_noop(**kwargs: Any) -> None:
        _procrastinate_done.append(time.perf_counter())
        if "i" in kwargs:
            _procrastinate_got[kwargs["i"]] = time.perf_counter()
            if _procrastinate_event is not None:
                _procrastinate_event.set()

    return app, bench_noop


_procrastinate_got: dict[int, float] = {}


def procrastinate_available() -> str | None:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return "procrastinate not installed"
    try:
        with psycopg.connect(conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PROCRASTINATE_SCHEMA}")
            exists = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'procrastinate_jobs'",
                [PROCRASTINATE_SCHEMA],
            ).fetchone()
        if not exists:
            app, _ = _procrastinate_app()

            async def apply() -> None:
                async with app.open_async():
                    await app.schema_manager.apply_schema_async()

            asyncio.run(apply())
        _procrastinate_clear()
    except Exception as exc:
        return f"could not set up its schema: {type(exc).__name__}: {str(exc)[:100]}"
    return None


def procrastinate_defer(calls: int, per: int) -> float:
    app, task = _procrastinate_app()

    async def main() -> float:
        async with app.open_async():
            t = time.perf_counter()
            for _ in range(calls):
                if per == 1:
                    await task.defer_async(body=BODY)
                else:
                    await task.batch_defer_async(*[{"body": BODY}] * per)
            return calls * per / (time.perf_counter() - t)

    try:
        return asyncio.run(main())
    finally:
        _procrastinate_clear()


def _procrastinate_clear() -> None:
    # Its triggers name its tables unqualified: run with its search_path.
    with psycopg.connect(conninfo(options=f"-c search_path={PROCRASTINATE_SCHEMA}"), autocommit=True) as conn:
        conn.execute(f"DELETE FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs")
    vacuum_between_rounds([f"{PROCRASTINATE_SCHEMA}.{t}" for t in ("procrastinate_jobs", "procrastinate_events", "procrastinate_workers")])


def procrastinate_worker(total: int, concurrency: int) -> float:
    """Jobs per second of a worker draining ``total`` waiting no-op jobs."""
    app, task = _procrastinate_app()

    async def main() -> float:
        async with app.open_async():
            for start in range(0, total, 500):
                await task.batch_defer_async(*[{"body": BODY}] * min(500, total - start))
            _procrastinate_done.clear()
            t = time.perf_counter()
            await asyncio.wait_for(
                app.run_worker_async(
                    queues=["bench"], wait=False, concurrency=concurrency, delete_jobs="successful", install_signal_handlers=False
                ),
                timeout=600,
            )
            if len(_procrastinate_done) < total:
                raise RuntimeError(f"worker ran {len(_procrastinate_done)} of {total} jobs")
            return total / (_procrastinate_done[-1] - t)

    try:
        return asyncio.run(main())
    finally:
        _procrastinate_clear()


def procrastinate_latency(n: int) -> list[float]:
    app, task = _procrastinate_app()

    async def main() -> list[float]:
        global _procrastinate_event
        _procrastinate_event = asyncio.Event()
        samples = []
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(queues=["bench"], wait=True, concurrency=1, delete_jobs="successful", install_signal_handlers=False)
            )
            try:
                await asyncio.sleep(0.5)
                for i in range(n):
                    _procrastinate_event.clear()
                    t = time.perf_counter()
                    await task.defer_async(i=i)
                    await asyncio.wait_for(_procrastinate_event.wait(), 10)
                    samples.append((_procrastinate_got[i] - t) * 1000)
                    await asyncio.sleep(0.02)
            finally:
                worker.cancel()
                try:
                    await asyncio.wait_for(worker, 10)
                except (asyncio.CancelledError, TimeoutError):
                    pass
        return samples

    try:
        return asyncio.run(main())
    finally:
        _procrastinate_event = None
        _procrastinate_clear()


# --------------------------------------------------------------------------- #
# Machine, table, files
# --------------------------------------------------------------------------- #


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "rabbitmq": rabbit_version(),
    }


def machine_line(m: dict[str, Any]) -> str:
    """The machine a run measured, as the table's footer and the run's first lines say it."""
    autovacuum = "" if m.get("autovacuum", True) else ", autovacuum off: the benchmark vacuums between rounds"
    return (
        f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB, {m.get('os')}, Python {m.get('python')}, "
        f"{m.get('postgresql')} (synchronous_commit={m.get('synchronous_commit')}{autovacuum}), RabbitMQ {m.get('rabbitmq') or '?'}"
    )


def markdown(rows: list[Row], machine: dict[str, Any], sizes: Sizes) -> str:
    lines = [
        "| scenario | " + " | ".join(HEADERS) + " | target | met? |",
        "| --- | " + " | ".join("---" for _ in HEADERS) + " | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row.scenario} | " + " | ".join(row.cells[p].cell() for p in PEERS) + f" | {row.target} | {row.met_cell()} |")
    m = machine
    lines += [
        "",
        f"Machine: {machine_line(m)}. Load average before/after: {m.get('load_average_before')} / "
        f"{m.get('load_average_after')}; run took {m.get('duration_s')} s.",
        f"Median of {sizes.rounds} rounds (min-max); latency: percentiles over {sizes.latency * sizes.rounds} sends.",
    ]
    ratios = [f"{r.scenario}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.ratios.items() if v is not None) for r in rows if any(v is not None for v in r.ratios.values())]
    if ratios:
        lines += ["", "Ratios (mqadmin ÷ peer, or measured ÷ target):", ""] + [f"- {x}" for x in ratios]
    return "\n".join(lines) + "\n"


def write_results(rows: list[Row], machine: dict[str, Any], sizes: Sizes, results_dir: Path) -> str:
    results_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, machine, sizes)
    (results_dir / "latest.md").write_text(md)
    data = {
        "machine": machine,
        "sizes": sizes.__dict__,
        "rows": [
            {
                "key": r.key,
                "scenario": r.scenario,
                "target": r.target,
                "met": r.met,
                "floor_met": r.floor_met,
                "ratios": r.ratios,
                "cells": {p: r.cells[p].to_json() for p in PEERS},
            }
            for r in rows
        ],
    }
    (results_dir / "latest.json").write_text(json.dumps(data, indent=2))
    return md


def run(
    *,
    quick: bool = False,
    big: int | None = None,
    rounds: int | None = None,
    peers: tuple[str, ...] = PEERS[1:],
    out: Output = sys.stdout,
    sizes: Sizes | None = None,
    results_dir: Path = RESULTS_DIR,
) -> str:
    """Run every scenario; print and write the table; return it as Markdown."""
    sizes = sizes or Sizes.for_run(quick=quick, big=big, rounds=rounds)
    bench = Bench(sizes, out=out, peers=peers, results_dir=results_dir)
    rows = bench.run()
    md = write_results(rows, bench.machine, sizes, results_dir)
    out.write("\n" + md)
    out.write(f"\nWritten to {results_dir / 'latest.md'} and latest.json\n")
    return md
