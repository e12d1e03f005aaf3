"""The core of ``mq bench``: the queues it fills and empties, its output,
and running every peer's rounds in turn. The scenarios (``scenarios.Bench``)
build on it."""

from __future__ import annotations

import os
import statistics
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from django.db import connection

from queues import broker
from queues.models import Queue, Token

from .measure import (
    PREFIX,
    BenchError,
    Measure,
    Output,
    Sizes,
    Stat,
    conninfo,
    skipped,
    time_arrivals,
    vacuum_between_rounds,
)
from .raw import DELTA_TABLE, MESSAGE_TABLE, STATS_TABLE, RawSQL
from .server import Api
from .table import PEERS, RESULTS_DIR, machine_info
from .wal import PeerWal


class Runner:
    """What every scenario uses: the bench's queues and token, the stats
    gathered so far, and where they are said."""

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
        # The URLs of mqadmin's other servers, by peer (scenarios.ASYNC).
        self.urls: dict[str, str] = {}
        self.rabbit_reason: str | None = None
        self.procrastinate_reason: str | None = None
        self.lean_reason: str | None = None
        # What each peer writes to the WAL (scenario 8), by peer.
        self.wal_by_peer: dict[str, PeerWal] = {}
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
        """Every peer's rounds in turn (mqadmin, raw SQL, lean SQL, RabbitMQ,
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
            self.put(key, m.peer, Stat(values, note=m.twin_note.format(*twins) if m.twins else m.note, twins=twins))

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
        """A connection of the raw SQL peer's own (close it)."""
        return RawSQL(conninfo(), self.queues)

    def prefill(self, name: str, n: int) -> None:
        """``n`` ready messages in a queue before a drain, through the raw
        SQL peer's statements: the quickest way in, not itself measured."""
        raw = self.raw()
        try:
            for start in range(0, n, 1000):
                raw.publish(self.queue_ids[name], min(1000, n - start))
        finally:
            raw.close()

    # -- latency ---------------------------------------------------------------

    def latency_loop(
        self, n: int, consumer: Callable[[], None], stop: threading.Event, arrived: threading.Event, got: dict[int, float], send: Callable[[Any, int], object]
    ) -> list[float]:
        """``time_arrivals`` with ``consumer`` running in a thread (told to
        end through ``stop``) and mqadmin's client for ``send(api, i)``."""
        thread = threading.Thread(target=consumer, daemon=True)
        thread.start()
        api = Api(self.url, self.token)
        try:
            samples = time_arrivals(n, lambda i: send(api, i), arrived, got)
        finally:
            stop.set()
            api.close()
            thread.join(15)
        self.empty("latency")
        return samples
