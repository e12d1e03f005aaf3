"""What every scenario and peer of ``mq bench`` shares: the sizes of a run,
the body sent, how a measurement is kept and shown, consumers counting down
a drain, and the way to the benchmark's database."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg
from django.conf import settings
from django.db import connection

PREFIX = "bench-"
# Row 9: a FIFO queue of FIFO_GROUPS groups, received FIFO_MAX at a time with
# 1 and FIFO_CROWD consumers registered; the row's cell is the crowd's, the
# other two (FIFO_KEYS) its yardsticks.
FIFO_GROUPS = 2000
FIFO_MAX = 10
FIFO_CROWD = 200
FIFO_KEYS = ("fifo_1", "fifo", "fifo_standard")
# The window of row 4b: messages a consumer has delivered ahead of the one it handles.
PREFETCH = 10

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
    herd: int = 2000  # consumers long-polling one queue in scenario 8

    def __str__(self) -> str:
        return (
            f"{self.rounds} rounds a scenario; a round sends {self.batches} batches of 100 and {self.singles:,} single "
            f"messages, drains {self.drain:,}, makes {self.trips:,} round trips, handles {self.windowed:,} through a window "
            f"and times {self.latency:,} sends; {self.big:,} waiting in rows 6-7, beside {self.dash_queues:,} queues; "
            f"{self.herd:,} consumers long-polling in row 8"
        )

    @classmethod
    def for_run(cls, *, quick: bool, big: int | None, rounds: int | None) -> Sizes:
        if quick:
            s = cls(rounds=3, batches=50, singles=150, drain=1000, trips=150, windowed=1000, latency=60, big=300_000, dash_queues=1000,
                    herd=1000)
        else:
            s = cls(rounds=5, batches=100, singles=300, drain=3000, trips=300, windowed=3000, latency=100, big=10_000_000, dash_queues=1000)
        if big is not None:
            s.big = big
        if rounds is not None:
            s.rounds = rounds
        return s

    @classmethod
    def tiny(cls) -> Sizes:
        """For the smoke test: every code path, almost no work."""
        return cls(rounds=1, batches=2, singles=5, drain=200, trips=5, windowed=20, latency=3, big=2000, dash_queues=5, herd=10)


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
    # The medians of the variants measured beside it (Measure.twins), in order.
    twins: list[float] = field(default_factory=list)

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
            "twins": self.twins,
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
# The benchmark's database
# --------------------------------------------------------------------------- #


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



def time_arrivals(n: int, send: Callable[[int], object], arrived: threading.Event, got: dict[int, float]) -> list[float]:
    """Send ``n`` messages one by one (``send(i)``), each once the last has
    reached a consumer (which sets ``got[i]`` and ``arrived``): each one's
    milliseconds from send to arrival."""
    samples = []
    time.sleep(0.3)
    for i in range(n):
        arrived.clear()
        t = time.perf_counter()
        send(i)
        if not arrived.wait(10):
            raise RuntimeError(f"message {i} never reached the consumer")
        samples.append((got[i] - t) * 1000)
        time.sleep(0.02)  # the consumer is back in its long poll
    return samples


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

