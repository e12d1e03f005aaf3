"""``mq bench``: mqadmin side by side with what users would pick instead.

Each scenario runs for mqadmin over its real HTTP API (a ``mq serve`` the
bench starts on a free port) and for the peers through their usual clients,
on this machine, in the same run, with the same ~200-byte JSON bodies:

* **raw SQL**: the very statements the broker runs (insert, claim, delete,
  counter delta, NOTIFY), sent straight through psycopg: the floor, i.e. what
  the HTTP layer costs us;
* **lean SQL**: the least a queue in PostgreSQL does (one minimal table in a
  schema of its own, a claim over ``SKIP LOCKED``, an ack that deletes): the
  floor under mqadmin's design, i.e. what the design costs us;
* **RabbitMQ** through pika: durable queue, persistent messages;
* **Procrastinate** on the same PostgreSQL, in a schema of its own.

A peer that is not there is reported as skipped, with the reason. The result
is one table, printed and written to ``bench-results/latest.{json,md}``, with
a second one below it: what mqadmin's statements and the lean floor's write
to the WAL per message.

The modules: ``scenarios`` (each row, mqadmin's rounds beside the peers'),
``runner`` (the queues, the output, rounds in turns), ``raw``, ``lean``,
``rabbitmq`` and ``procrastinate`` (one a peer), ``wal`` (the WAL table),
``server`` (mqadmin under test and its client), ``measure`` (sizes, stats,
what all share), ``table`` (the rows, the Markdown, the files).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .measure import BenchError, Output, Sizes
from .scenarios import Bench
from .table import PEERS, RESULTS_DIR, write_results

__all__ = ["BenchError", "Sizes", "run"]


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
    md = write_results(rows, bench.machine, sizes, results_dir, bench.wal_by_peer)
    out.write("\n" + md)
    out.write(f"\nWritten to {results_dir / 'latest.md'} and latest.json\n")
    return md
