"""WAL per message: what mqadmin's statements (the raw SQL peer's) and the
lean floor write to PostgreSQL's write-ahead log for a sent message and for
a claimed and acked one, and for one claim of 100 and one ack of 100.

The WAL between two points is read with ``pg_walinspect`` (created in the
lean schema, so it goes with it): records, full-page images and bytes, and
which relation (the table, each index) each record touched. Where the
extension cannot be created, only bytes are known (``pg_wal_lsn_diff``).
The WAL is the whole server's: records that name another database's
relations are left out, and each figure is the least of a few repeats, as
another database's commits can only add to it. Each claim and each ack is a
statement and a commit of its own (the bench's drains carry acks on the
next receive instead; per message the WAL is the same work).

``EXPLAIN (ANALYZE, WAL, BUFFERS)`` of one claim of 100 and one ack of 100,
for each, is written beside the table (``wal-explain.txt``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg

from queues.backends.common import Statement

from . import lean
from .lean import LEAN_SCHEMA, LeanSQL
from .raw import RawSQL

# Repeats of each measurement; the least is kept.
REPEATS = 3
# Messages a claim, an ack and a send carry.
BATCH = 100
EXPLAIN = "EXPLAIN (ANALYZE, WAL, BUFFERS) "

_RECORDS = r"""
SELECT r.resource_manager || ' ' || split_part(r.record_type, '+', 1), coalesce(c.relname, ''), count(*), sum(r.record_length), count(*) FILTER (WHERE r.fpi_length > 0)
FROM {schema}.pg_get_wal_records_info(%s::pg_lsn, pg_current_wal_flush_lsn()) AS r
CROSS JOIN LATERAL (SELECT regexp_match(r.block_ref, 'rel \d+/(\d+)/(\d+)') AS m) AS b
LEFT JOIN pg_class AS c ON b.m IS NOT NULL AND c.relfilenode = b.m[2]::oid
WHERE b.m IS NULL OR b.m[1]::oid = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY 1, 2
"""


@dataclass
class Wal:
    """WAL written: records (None where only bytes are known), those with a
    full-page image, bytes, and records by "resource record-type relation"
    (e.g. "Heap LOCK queues_message")."""

    records: int | None = None
    fpi: int = 0
    bytes: int = 0
    by_relation: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "fpi": self.fpi, "bytes": self.bytes, "by_relation": self.by_relation}


class WalReader:
    """Reads the WAL written since a point, over a connection of its own."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.schema = self._walinspect()

    def _walinspect(self) -> str | None:
        try:
            self.conn.execute(f"CREATE EXTENSION IF NOT EXISTS pg_walinspect SCHEMA {LEAN_SCHEMA}")
            row = self.conn.execute(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_walinspect'"
            ).fetchone()
        except psycopg.Error:
            return None
        return row[0] if row else None

    def point(self) -> str:
        row = self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])

    def since(self, start: str) -> Wal:
        if self.schema is None:
            row = self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), %s::pg_lsn)::bigint", [start]).fetchone()
            return Wal(bytes=int(row[0]) if row else 0)
        wal = Wal(records=0)
        for kind, relation, records, size, fpi in self.conn.execute(_RECORDS.format(schema=self.schema), [start]).fetchall():
            assert wal.records is not None
            wal.records += records
            wal.bytes += int(size)
            wal.fpi += fpi
            wal.by_relation[f"{kind} {relation}".strip()] = records
        return wal


def least(repeats: int, measure: Callable[[], Wal]) -> Wal:
    """The least WAL of ``repeats`` measurements: another database's writes
    only add to one."""
    return min((measure() for _ in range(repeats)), key=lambda w: w.bytes)


class Peer(Protocol):
    """What the WAL measurement needs of a peer."""

    conn: psycopg.Connection[Any]

    def send(self, n: int) -> object: ...

    def fill(self, n: int) -> None: ...

    def claim(self, n: int) -> list[Any]: ...

    def ack(self, claimed: list[Any]) -> object: ...

    def claim_statement(self, n: int) -> Statement: ...

    def ack_statement(self, claimed: list[Any]) -> Statement: ...

    def empty(self) -> None: ...


class MqadminStatements:
    """mqadmin's statements, as the raw SQL peer runs them: a receive without
    acks (promotion, claim, counter deltas) and an ack (delete, deltas)."""

    def __init__(self, raw: RawSQL, queue_id: int, fill: Callable[[int], None], empty: Callable[[], None]) -> None:
        self.raw, self.queue_id, self.conn = raw, queue_id, raw.conn
        self._fill, self._empty = fill, empty

    def send(self, n: int) -> object:
        return self.raw.publish(self.queue_id, n)

    def fill(self, n: int) -> None:
        self._fill(n)

    def empty(self) -> None:
        self._empty()

    def claim(self, n: int) -> list[Any]:
        return self.raw.claim(self.queue_id, n)

    def ack(self, claimed: list[Any]) -> object:
        return self.raw.ack(self.queue_id, claimed)

    def claim_statement(self, n: int) -> Statement:
        return self.raw.receive_statement(self.queue_id, [], n)

    def ack_statement(self, claimed: list[Any]) -> Statement:
        return self.raw.ack_statement(self.queue_id, claimed)


class LeanStatements:
    """The lean floor's statements."""

    def __init__(self) -> None:
        self.lean = LeanSQL()
        self.conn = self.lean.conn

    def send(self, n: int) -> object:
        return self.lean.publish(n)

    def fill(self, n: int) -> None:
        lean.fill(n)

    def claim(self, n: int) -> list[Any]:
        return self.lean.claim(n)

    def ack(self, claimed: list[Any]) -> object:
        return self.lean.ack(claimed)

    def claim_statement(self, n: int) -> Statement:
        return lean.CLAIM, [lean.LEASE_SECONDS, lean.QUEUE_ID, n]

    def ack_statement(self, claimed: list[Any]) -> Statement:
        return lean.ACK, [claimed]

    def empty(self) -> None:
        lean.empty()


@dataclass
class PeerWal:
    """One peer's WAL: per sent message, per claimed and acked message (over
    ``messages``), per claim of 100 and per ack of 100, with the milliseconds
    each of those two spent executing (EXPLAIN ANALYZE) and its plan."""

    messages: int
    send: Wal
    drain: Wal
    claim: Wal
    ack: Wal
    claim_ms: float | None
    ack_ms: float | None
    explain: str

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            **{k: getattr(self, k).to_json() for k in ("send", "drain", "claim", "ack")},
            "claim_ms": self.claim_ms,
            "ack_ms": self.ack_ms,
        }


def measure(peer: Peer, reader: WalReader, messages: int, repeats: int = REPEATS) -> PeerWal:
    """``peer``'s WAL; ``messages`` (a multiple of BATCH) are sent, and
    claimed and acked, in batches of BATCH. Leaves its table empty."""
    batches = max(1, messages // BATCH)
    messages = batches * BATCH

    def sends() -> Wal:
        start = reader.point()
        for _ in range(batches):
            peer.send(BATCH)
        wal = reader.since(start)
        peer.empty()
        return wal

    def drain() -> Wal:
        peer.fill(messages)
        start = reader.point()
        for _ in range(batches):
            peer.ack(peer.claim(BATCH))
        wal = reader.since(start)
        peer.empty()
        return wal

    statements: dict[str, list[Wal]] = {"claim": [], "ack": []}
    for _ in range(repeats):
        peer.fill(BATCH)
        start = reader.point()
        claimed = peer.claim(BATCH)
        statements["claim"].append(reader.since(start))
        start = reader.point()
        peer.ack(claimed)
        statements["ack"].append(reader.since(start))
    peer.empty()

    send_wal = least(repeats, sends)
    drain_wal = least(repeats, drain)
    claim_plan, ack_plan = explain(peer)
    return PeerWal(
        messages,
        send_wal,
        drain_wal,
        min(statements["claim"], key=lambda w: w.bytes),
        min(statements["ack"], key=lambda w: w.bytes),
        execution_ms(claim_plan),
        execution_ms(ack_plan),
        f"-- one claim of {BATCH}\n{claim_plan}\n\n-- one ack of {BATCH}\n{ack_plan}\n",
    )


def explain(peer: Peer) -> tuple[str, str]:
    """``EXPLAIN (ANALYZE, WAL, BUFFERS)`` of a claim of BATCH and of an
    ack of BATCH (of a second claim's messages); both run."""
    peer.fill(2 * BATCH)
    try:
        sql, params = peer.claim_statement(BATCH)
        claim_plan = "\n".join(r[0] for r in peer.conn.execute(EXPLAIN + sql, params).fetchall())
        sql, params = peer.ack_statement(peer.claim(BATCH))
        ack_plan = "\n".join(r[0] for r in peer.conn.execute(EXPLAIN + sql, params).fetchall())
    finally:
        peer.empty()
    return claim_plan, ack_plan


def execution_ms(plan: str) -> float | None:
    found = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return float(found[1]) if found else None


# --------------------------------------------------------------------------- #
# The table
# --------------------------------------------------------------------------- #

PEERS = (("raw", "mqadmin's statements (raw SQL)"), ("lean", "lean SQL"))


def per_message(wal: Wal, n: int) -> str:
    records = "" if wal.records is None else f"{wal.records / n:.1f} records, "
    return f"{records}{wal.bytes / n:,.0f} B"


def per_statement(wal: Wal, ms: float | None) -> str:
    records = "" if wal.records is None else f"{wal.records} records ({wal.fpi} with a full page), "
    executing = "" if ms is None else f"; {ms:.2f} ms executing"
    return f"{records}{wal.bytes / 1000:.1f} kB{executing}"


def by_relation(wal: Wal) -> str:
    top = sorted(wal.by_relation.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {n}" for name, n in top) or "—"


def ratio(a: Wal | None, b: Wal | None) -> str:
    if a is None or b is None or not b.bytes:
        return "—"
    records = "" if a.records is None or not b.records else f"{a.records / b.records:.2f} x records, "
    return f"{records}{a.bytes / b.bytes:.2f} x bytes"


def markdown(wals: dict[str, PeerWal]) -> str:
    """The WAL table: a row a measurement, a column a peer, and mqadmin's
    statements over the lean floor's."""
    raw, lean_ = wals.get("raw"), wals.get("lean")
    header = "| WAL | " + " | ".join(title for _, title in PEERS) + " | mqadmin ÷ lean |"
    lines = [header, "| --- | --- | --- | --- |"]

    def row(label: str, cell: Callable[[PeerWal], str], pick: Callable[[PeerWal], Wal] | None) -> None:
        cells = [cell(wals[p]) if p in wals else "—" for p, _ in PEERS]
        versus = ratio(pick(raw) if raw else None, pick(lean_) if lean_ else None) if pick else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {versus} |")

    row(f"a sent message (sends of {BATCH})", lambda w: per_message(w.send, w.messages), lambda w: w.send)
    row(f"a claimed and acked message (claims of {BATCH}, acks of {BATCH})", lambda w: per_message(w.drain, w.messages), lambda w: w.drain)
    row(f"one claim of {BATCH}, with its commit", lambda w: per_statement(w.claim, w.claim_ms), lambda w: w.claim)
    row(f"one ack of {BATCH}, with its commit", lambda w: per_statement(w.ack, w.ack_ms), lambda w: w.ack)
    row(f"one claim of {BATCH}: records by kind and relation", lambda w: by_relation(w.claim), None)
    row(f"one ack of {BATCH}: records by kind and relation", lambda w: by_relation(w.ack), None)
    return "\n".join(lines) + "\n"


def write_explain(wals: dict[str, PeerWal], path: Path) -> None:
    path.write_text("\n".join(f"===== {title} =====\n{wals[p].explain}" for p, title in PEERS if p in wals))
