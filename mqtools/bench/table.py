"""The table of ``mq bench``: a row a scenario with each peer's cell, its
target and whether it was met; the machine it ran on; the files it is
written to (``bench-results/latest.{md,json}``)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings

from . import wal
from .measure import FIFO_CROWD, FIFO_GROUPS, FIFO_KEYS, FIFO_MAX, PREFETCH, Sizes, Stat, skipped
from .rabbitmq import rabbit_version
from .wal import PeerWal

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
    # meets the same target: a miss it shares is the statements', not the
    # layers above them.
    floor_met: str = "—"
    # Whether the lean floor (the least a queue in PostgreSQL does) meets the
    # target's parts that name another peer: a miss it shares is PostgreSQL's.
    lean_met: str = "—"
    # mqadmin ÷ the lean floor, as its own column: how far the design is
    # from what PostgreSQL allows.
    vs_lean: str = "—"

    def met_cell(self) -> str:
        floors = [f"{name}: {v}" for name, v in (("raw SQL", self.floor_met), ("lean SQL", self.lean_met)) if v != "—"]
        return f"{self.met} ({'; '.join(floors)})" if floors else self.met


# mqadmin_async: mqadmin with MQ_ASYNC_COMMIT=on, in the drain and round-trip
# rows only; targets are judged on mqadmin's default.
PEERS = ("mqadmin", "mqadmin_async", "raw", "lean", "rabbitmq", "procrastinate")
HEADERS = ("mqadmin", "mqadmin, async commit", "raw SQL", "lean SQL", "RabbitMQ", "Procrastinate")


def table_rows(stats: dict[str, dict[str, Stat]], sizes: Sizes, reasons: dict[str, str]) -> list[Row]:
    """The table's rows from each scenario's cells (``stats[key][peer]``);
    a peer that did not run says why (``reasons[peer]``)."""
    st = stats

    def get(key: str, peer: str) -> Stat | None:
        stat = st.get(key, {}).get(peer)
        return stat if stat is not None and stat.skipped is None and stat.values else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def med(stat: Stat | None) -> float | None:
        return stat.median if stat else None

    def ratio(a: Stat | None, b: Stat | None) -> float | None:
        return div(med(a), med(b))

    def twin(stat: Stat | None, i: int) -> float | None:
        return stat.twins[i] if stat and len(stat.twins) > i else None

    def cells(key: str) -> dict[str, Stat]:
        out = {}
        for peer in PEERS:
            stat = st.get(key, {}).get(peer)
            if stat is None and peer in reasons:
                stat = skipped(reasons[peer])
            out[peer] = stat or Stat()
        return out

    def verdict(*checks: object) -> str:
        # Each check is falsy (missed), truthy (met) or None (not measured).
        if any(c is None for c in checks):
            return "?"
        return "yes" if all(checks) else "no"

    def at_least(x: float | None, floor: float) -> bool | None:
        return None if x is None else x >= floor

    def above(x: float | None, floor: float) -> bool | None:
        return None if x is None else x > floor

    def versus(**parts: float | None) -> str:
        shown = [f"{name.replace('_', ' ')} {v:.2f}" for name, v in parts.items() if v is not None]
        return ", ".join(shown) or "—"

    rows: list[Row] = []
    mq = lambda k: get(k, "mqadmin")  # noqa: E731
    raw = lambda k: get(k, "raw")  # noqa: E731
    lean = lambda k: get(k, "lean")  # noqa: E731

    def async_ratios(key: str, twin_of_streams: int | None) -> dict[str, float | None]:
        """mqadmin with MQ_ASYNC_COMMIT=on ÷ mqadmin, in the cell's own terms
        and, for a drain, on consume streams (its twin ``twin_of_streams``)."""
        a, m = get(key, "mqadmin_async"), mq(key)
        out = {"async_vs_default": ratio(a, m)}
        if twin_of_streams is not None:
            out["async_streams_vs_default"] = div(twin(a, twin_of_streams), twin(m, twin_of_streams))
        return out

    # mqadmin's cell: on a publish stream; its first twin: over HTTP.
    key = "produce_batch"
    r_lean, r_http = ratio(mq(key), lean(key)), div(twin(mq(key), 0), med(lean(key)))
    r_rmq = ratio(mq(key), get(key, "rabbitmq"))
    raw_lean, f_rmq, lean_rmq = ratio(raw(key), lean(key)), ratio(raw(key), get(key, "rabbitmq")), ratio(lean(key), get(key, "rabbitmq"))
    rows.append(Row(key, "1. produce, batches of 100", cells(key),
                    "≥ 0.8 x lean SQL on a publish stream, ≥ 0.6 x over HTTP; > RabbitMQ (no confirms)",
                    verdict(at_least(r_lean, 0.8), at_least(r_http, 0.6), above(r_rmq, 1)),
                    {"vs_lean": r_lean, "http_vs_lean": r_http, "vs_raw": ratio(mq(key), raw(key)), "vs_rabbitmq": r_rmq,
                     "raw_vs_lean": raw_lean, "lean_vs_rabbitmq": lean_rmq},
                    verdict(at_least(raw_lean, 0.8), above(f_rmq, 1)), verdict(above(lean_rmq, 1)),
                    versus(stream=r_lean, HTTP=r_http)))
    # mqadmin's cell: over HTTP; its first twin: on a publish stream.
    key = "produce_single"
    rows.append(Row(key, "2. produce, one per request", cells(key),
                    ratios={"vs_raw": ratio(mq(key), raw(key)), "vs_lean": ratio(mq(key), lean(key))},
                    vs_lean=versus(HTTP=ratio(mq(key), lean(key)), stream=div(twin(mq(key), 0), med(lean(key))))))
    # mqadmin's cell: over HTTP, acks riding on receives; its second twin: on
    # consume streams. One consumer's targets are four's, 20 % lower.
    for n in (1, 4):
        key = f"drain_{n}"
        share = 1.0 if n == 4 else 0.8
        rmq = get(key, "rabbitmq")
        r_lean, r_raw, r_rmq = ratio(mq(key), lean(key)), ratio(mq(key), raw(key)), ratio(mq(key), rmq)
        streams = twin(mq(key), 1)
        s_lean, s_rmq = div(streams, med(lean(key))), div(streams, med(rmq))
        raw_lean, f_rmq, lean_rmq = ratio(raw(key), lean(key)), ratio(raw(key), rmq), ratio(lean(key), rmq)
        beats_rabbitmq = partial(above, floor=1) if n == 4 else partial(at_least, floor=share)

        target = (
            "≥ 0.5 x lean SQL over HTTP; > RabbitMQ (manual ack) on consume streams"
            if n == 4
            else "within 20 % of 4 consumers': ≥ 0.4 x lean SQL over HTTP; ≥ 0.8 x RabbitMQ (manual ack) on consume streams"
        )
        rows.append(Row(key, f"3. receive 100 + ack 100, {n} consumer{'s' if n > 1 else ''}", cells(key), target,
                        verdict(at_least(r_lean, 0.5 * share), beats_rabbitmq(s_rmq)),
                        {"vs_lean": r_lean, "streams_vs_lean": s_lean, "vs_raw": r_raw, "vs_rabbitmq": r_rmq,
                         "streams_vs_rabbitmq": s_rmq, "raw_vs_lean": raw_lean, "raw_vs_rabbitmq": f_rmq, "lean_vs_rabbitmq": lean_rmq,
                         **async_ratios(key, 1)},
                        verdict(at_least(raw_lean, 0.5 * share), beats_rabbitmq(f_rmq)), verdict(beats_rabbitmq(lean_rmq)),
                        versus(HTTP=r_lean, streams=s_lean)))
    # mqadmin's cell: a consume stream, prefetch 1; its first twin: over HTTP.
    key = "round_trip"
    pro = get(key, "procrastinate")
    r_pro, r_lean = ratio(mq(key), pro), ratio(mq(key), lean(key))
    raw_pro, raw_lean, lean_pro = ratio(raw(key), pro), ratio(raw(key), lean(key)), ratio(lean(key), pro)
    rows.append(Row(key, "4. one message per round trip", cells(key),
                    "≥ 3 x Procrastinate worker and ≥ 0.5 x lean SQL (claim 1 + ack 1), on a consume stream",
                    verdict(at_least(r_pro, 3), at_least(r_lean, 0.5)),
                    {"vs_procrastinate": r_pro, "vs_lean": r_lean, "vs_raw": ratio(mq(key), raw(key)),
                     "raw_vs_procrastinate": raw_pro, "raw_vs_lean": raw_lean, "lean_vs_procrastinate": lean_pro,
                     **async_ratios(key, None)},
                    verdict(at_least(raw_pro, 3), at_least(raw_lean, 0.5)), verdict(at_least(lean_pro, 3)),
                    versus(stream=r_lean, HTTP=div(twin(mq(key), 0), med(lean(key))))))
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
    send, delivered, failures = mq("herd_send"), mq("herd_delivered"), mq("herd_failures")
    if "herd_send" in st:
        healthy = failures is not None and failures.median == 0
        rows.append(Row("herd_send", f"8. send of 100 with {sizes.herd:,} consumers long-polling", cells("herd_send"),
                        "p99 < 50 ms, none refused or reset", verdict(send and (send.p99 or 0) < 50, healthy),
                        {"p99_vs_50ms": (send.p99 or 0) / 50 if send else None}))
        rows.append(Row("herd_delivered", f"8b. the last of {sizes.herd:,} messages reaches its consumer, after the last send",
                        cells("herd_delivered"), "< 1,000 ms, all delivered",
                        verdict(delivered and max(delivered.values) < 1000, healthy),
                        {"vs_1000ms": max(delivered.values) / 1000 if delivered else None}))
    rows += fifo_rows(mq)
    return rows


def fifo_rows(mq: Callable[[str], Stat | None]) -> list[Row]:
    """Row 9 (``fifo.fifo_receive``): a FIFO queue's receive with a crowd of
    consumers registered; its targets weigh it against one consumer and
    against a standard queue."""
    one, crowd, standard = (mq(key) for key in FIFO_KEYS)
    if crowd is None:
        return []
    by_crowd = crowd.median / one.median if one else None
    by_standard = max(one.median, crowd.median) / standard.median if one and standard else None
    met = "?" if by_crowd is None or by_standard is None else ("yes" if by_crowd <= 1.2 and by_standard <= 1.5 else "no")
    cells = {"mqadmin": crowd} | {peer: Stat() for peer in PEERS[1:]}
    return [Row("fifo", f"9. FIFO receive of {FIFO_MAX}, {FIFO_GROUPS:,} groups, {FIFO_CROWD} consumers", cells,
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
        "| scenario | " + " | ".join(HEADERS) + " | mqadmin ÷ lean SQL | target | met? |",
        "| --- | " + " | ".join("---" for _ in HEADERS) + " | --- | --- | --- |",
    ]
    for row in rows:
        cells = " | ".join(row.cells[p].cell() for p in PEERS)
        lines.append(f"| {row.scenario} | {cells} | {row.vs_lean} | {row.target} | {row.met_cell()} |")
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


def write_results(rows: list[Row], machine: dict[str, Any], sizes: Sizes, results_dir: Path, wal_by_peer: dict[str, PeerWal] | None = None) -> str:
    """Write the table (and the WAL table below it, with the plans beside in
    ``wal-explain.txt``); return the Markdown."""
    results_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, machine, sizes)
    if wal_by_peer:
        md += "\nWAL per message (the least of a few repeats; each claim and ack a statement and a commit of its own):\n\n" + wal.markdown(wal_by_peer)
        wal.write_explain(wal_by_peer, results_dir / "wal-explain.txt")
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
                "lean_met": r.lean_met,
                "vs_lean": r.vs_lean,
                "ratios": r.ratios,
                "cells": {p: r.cells[p].to_json() for p in PEERS},
            }
            for r in rows
        ],
        "wal": {peer: w.to_json() for peer, w in (wal_by_peer or {}).items()},
    }
    (results_dir / "latest.json").write_text(json.dumps(data, indent=2))
    return md
