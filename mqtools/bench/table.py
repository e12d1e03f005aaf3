"""The table of ``mq bench``: a row a scenario with each peer's cell, its
target and whether it was met; the machine it ran on; the files it is
written to (``bench-results/latest.{md,json}``)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from .fifo import FIFO_CROWD, FIFO_GROUPS, FIFO_KEYS, FIFO_MAX
from .measure import PREFETCH, Sizes, Stat, skipped
from .rabbitmq import rabbit_version

RESULTS_DIR = Path(settings.BASE_DIR) / "bench-results"


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


def table_rows(stats: dict[str, dict[str, Stat]], sizes: Sizes, rabbit_reason: str | None, procrastinate_reason: str | None) -> list[Row]:
    """The table's rows from each scenario's cells (``stats[key][peer]``);
    a peer that did not run says why (``*_reason``)."""
    st = stats

    def get(key: str, peer: str) -> Stat | None:
        stat = st.get(key, {}).get(peer)
        return stat if stat is not None and stat.skipped is None and stat.values else None

    def ratio(a: Stat | None, b: Stat | None) -> float | None:
        return a.median / b.median if a and b and b.median else None

    def cells(key: str) -> dict[str, Stat]:
        out = {}
        for peer in PEERS:
            stat = st.get(key, {}).get(peer)
            if stat is None and peer == "rabbitmq" and rabbit_reason:
                stat = skipped(rabbit_reason)
            if stat is None and peer == "procrastinate" and procrastinate_reason:
                stat = skipped(procrastinate_reason)
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
    rows.append(Row("claim_big", f"6. receive 100 + ack 100 with {sizes.big:,} waiting", big_cells,
                    "≥ 0.8 x the empty-ish queue", verdict(r_big and r_big >= 0.8), {"vs_empty": r_big}))
    for key, label in (("dashboard_counts", "queue_counts()"), ("dashboard_tick", "aggregator tick")):
        d = mq(key)
        c = cells(key)
        if key in st:
            rows.append(Row(key, f"7. dashboard: {label}, {sizes.dash_queues:,} queues, {sizes.big:,} stored", c,
                            "< 50 ms DB time", verdict(d and d.median < 50), {"vs_50ms": d.median / 50 if d else None}))
    rows += fifo_rows(mq)
    return rows


def fifo_rows(mq: Callable[[str], Stat | None]) -> list[Row]:
    """Row 8 (``fifo.fifo_receive``): a FIFO queue's receive with a crowd of
    consumers registered; its targets weigh it against one consumer and
    against a standard queue."""
    one, crowd, standard = (mq(key) for key in FIFO_KEYS)
    if crowd is None:
        return []
    by_crowd = crowd.median / one.median if one else None
    by_standard = max(one.median, crowd.median) / standard.median if one and standard else None
    met = "?" if by_crowd is None or by_standard is None else ("yes" if by_crowd <= 1.2 and by_standard <= 1.5 else "no")
    cells = {"mqadmin": crowd} | {peer: Stat() for peer in PEERS[1:]}
    return [Row("fifo", f"8. FIFO receive of {FIFO_MAX}, {FIFO_GROUPS:,} groups, {FIFO_CROWD} consumers", cells,
                "≤ 1.2 x with 1 consumer, ≤ 1.5 x a standard queue", met,
                {"vs_1_consumer": by_crowd, "vs_standard": by_standard})]


# --------------------------------------------------------------------------- #
# The machine, the Markdown, the files
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
