"""`mq bench` keeps working: every scenario runs end to end at toy sizes.

No speed is asserted here (this machine's speed is not the code's); the
table's shape and the honesty of its cells are."""

from __future__ import annotations

import io
import json
import os
import re
from functools import partial

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from mqtools import bench
from mqtools.bench import lean, rabbitmq, wal
from mqtools.bench.measure import BODY_BYTES, Sizes, Stat, conninfo
from mqtools.bench.raw import RawSQL, fill_ready
from mqtools.bench.table import table_rows

pytestmark = pytest.mark.django_db(transaction=True)

SCENARIOS = ["produce_batch", "produce_single", "drain_1", "drain_4", "round_trip", "windowed", "latency", "claim_big",
             "dashboard_counts", "dashboard_tick", "herd_send", "herd_delivered", "fifo"]


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the refusal is about SQLite")
def test_bench_refuses_to_run_without_postgresql() -> None:
    with pytest.raises(CommandError, match="PostgreSQL"):
        call_command("mq", "bench", "--quick", stdout=io.StringIO())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the bench runs on PostgreSQL")
def test_bench_runs_every_scenario_and_writes_one_table(tmp_path, monkeypatch) -> None:
    # A RabbitMQ queue of its own, so a real bench running beside us is untouched.
    monkeypatch.setattr(rabbitmq, "RABBIT_QUEUE", f"mqbench-test-{id(tmp_path)}")
    out = io.StringIO()
    try:
        md = bench.run(sizes=bench.Sizes.tiny(), out=out, results_dir=tmp_path)
    finally:
        if rabbitmq.rabbit_available() is None:
            conn, ch = rabbitmq._rabbit()
            ch.queue_delete(rabbitmq.RABBIT_QUEUE)
            conn.close()

    data = json.loads((tmp_path / "latest.json").read_text())
    assert [row["key"] for row in data["rows"]] == SCENARIOS
    assert (tmp_path / "latest.md").read_text() == md
    assert md.splitlines()[0].startswith(
        "| scenario | mqadmin | mqadmin, async commit | raw SQL | lean SQL | RabbitMQ | Procrastinate | mqadmin ÷ lean SQL | target | met? |"
    )
    for row in data["rows"]:
        mq = row["cells"]["mqadmin"]
        assert mq["skipped"] is None, (row["key"], mq["skipped"])
        # The last delivery may land before the client has read its send's answer.
        assert mq["median"] > 0 or (row["key"] == "herd_delivered" and mq["median"] is not None), row["key"]
        assert row["met"] in ("yes", "no", "?", "—")
        assert row["floor_met"] in ("yes", "no", "?", "—")
    # Raw SQL runs wherever mqadmin does; each other peer either ran or says why not.
    by_key = {row["key"]: row for row in data["rows"]}
    assert by_key["produce_batch"]["cells"]["raw"]["median"] > 0
    # So does the lean floor, in the rows it has, with mqadmin's distance from it.
    for key in ("produce_batch", "produce_single", "drain_1", "drain_4", "round_trip"):
        assert by_key[key]["cells"]["lean"]["median"] > 0, key
        assert by_key[key]["ratios"]["vs_lean"] > 0, key
    assert by_key["drain_4"]["vs_lean"].startswith("HTTP "), by_key["drain_4"]["vs_lean"]
    assert by_key["latency"]["cells"]["lean"]["median"] is None
    for peer in ("rabbitmq", "procrastinate"):
        cell = by_key["produce_batch"]["cells"][peer]
        assert (cell["median"] or 0) > 0 or cell["skipped"], (peer, cell)
    assert "Machine:" in md
    # A fleet of long polls: every message delivered, no poll refused or reset.
    assert "(10 of 10 delivered; polls refused 0, reset 0, failed otherwise 0)" in by_key["herd_delivered"]["cells"]["mqadmin"]["note"]
    assert "nobody waiting" in by_key["herd_send"]["cells"]["mqadmin"]["note"]
    # mqadmin with MQ_ASYNC_COMMIT=on, a server of its own, in a column of its
    # own: the drains (over HTTP and on streams) and the round trip, beside
    # the default's figures, which the targets keep to.
    for key in ("drain_1", "drain_4", "round_trip"):
        relaxed = by_key[key]["cells"]["mqadmin_async"]
        assert relaxed["skipped"] is None and relaxed["median"] > 0, (key, relaxed)
        assert "consume stream" in relaxed["note"], relaxed["note"]
        assert by_key[key]["ratios"]["async_vs_default"] > 0, key
    for key in ("drain_1", "drain_4"):
        assert by_key[key]["ratios"]["async_streams_vs_default"] > 0, key
    assert all(by_key[key]["cells"]["mqadmin_async"]["median"] is None for key in ("produce_batch", "latency"))
    assert (tmp_path / "server-async.log").exists()
    # The streams are measured beside the HTTP calls, in mqadmin's notes.
    assert "publish stream" in by_key["produce_batch"]["cells"]["mqadmin"]["note"]
    assert "consume stream" in by_key["latency"]["cells"]["mqadmin"]["note"]
    assert "consume stream" in by_key["windowed"]["cells"]["mqadmin"]["note"]
    # Where a target names another peer, the table says whether the raw SQL
    # floor meets it too.
    for key in ("produce_batch", "drain_1", "drain_4", "round_trip", "latency"):
        assert by_key[key]["floor_met"] in ("yes", "no"), key
    assert "(raw SQL: " in next(line for line in md.splitlines() if line.startswith("| 4. one message"))
    # ...and whether the lean floor does, where the target names RabbitMQ or Procrastinate.
    for key in ("drain_1", "drain_4", "round_trip"):
        assert by_key[key]["lean_met"] in ("yes", "no"), key
    # What each writes to the WAL, in a table of its own, with the plans beside it.
    for peer in ("raw", "lean"):
        for part in ("send", "drain", "claim", "ack"):
            assert data["wal"][peer][part]["bytes"] > 0, (peer, part)
    assert "| a claimed and acked message" in md
    plans = (tmp_path / "wal-explain.txt").read_text()
    assert plans.count("WAL: records=") >= 4 and "Update on message" in plans
    # The lean floor's schema goes with the run.
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [lean.LEAN_SCHEMA])
        assert cur.fetchone() is None
    # What PostgreSQL alone spends on a message, beside the raw drain.
    costs = re.search(r"claim (\d+) µs \+ ack (\d+) µs a message", by_key["drain_1"]["cells"]["raw"]["note"])
    assert costs and int(costs[1]) > 0 and int(costs[2]) > 0, by_key["drain_1"]["cells"]["raw"]["note"]
    # The FIFO row weighs the crowd against one consumer and a standard queue.
    assert all(v > 0 for v in by_key["fifo"]["ratios"].values()), by_key["fifo"]["ratios"]
    assert "with 1:" in by_key["fifo"]["cells"]["mqadmin"]["note"]
    # The dashboard's thousand queues are not left behind.
    from queues.models import Queue

    assert not Queue.objects.filter(name__startswith="bench-dash-").exists()


@pytest.fixture
def lean_schema():
    if connection.vendor != "postgresql":
        pytest.skip("the lean floor is PostgreSQL's")
    lean.create_schema()
    yield
    lean.drop_schema()


def test_the_lean_floor_claims_each_message_once_and_its_ack_deletes_them(lean_schema) -> None:
    lean.fill(250)
    floor = lean.LeanSQL()
    try:
        batches = [floor.claim(100) for _ in range(4)]
        # Leased messages are out of sight until their lease runs out.
        assert [len(b) for b in batches] == [100, 100, 50, 0]
        claimed = [i for b in batches for i in b]
        assert len(set(claimed)) == 250
        assert floor.ack(claimed) == 250
        assert floor.ack(claimed) == 0
        # An ack riding on a claim: the acked are gone, the next are leased.
        lean.fill(3)
        first = floor.claim(2)
        last = floor.ack_and_claim(first, 2)
        assert len(last) == 1 and last[0] not in first
        assert lean.waiting() == 1
        assert floor.ack(last) == 1
    finally:
        floor.close()
    assert lean.waiting() == 0


@pytest.mark.parametrize(("consumers", "riding"), [(1, False), (4, False), (1, True), (4, True)])
def test_the_lean_drain_takes_exactly_what_it_was_given(lean_schema, monkeypatch, consumers: int, riding: bool) -> None:
    left: list[int] = []
    really_empty = lean.empty

    def empty() -> None:
        left.append(lean.waiting())
        really_empty()

    monkeypatch.setattr(lean, "empty", empty)
    assert lean.drain(consumers, 250, 100, riding=riding) > 0
    assert lean.drain(consumers, 7, 1, riding=riding) > 0
    # Nothing left for the cleanup: every message claimed and acked, none twice.
    assert left == [0, 0]


def test_the_lean_floor_keeps_to_a_schema_of_its_own(lean_schema) -> None:
    from queues.models import Message

    lean.fill(10)
    with connection.cursor() as cur:
        cur.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'message'")
        assert cur.fetchall() == [(lean.LEAN_SCHEMA,)]
    assert not Message.objects.exists()
    lean.drop_schema()
    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", [lean.LEAN_SCHEMA])
        assert cur.fetchone() is None


def test_the_wal_of_a_lean_claim_is_read_per_relation(lean_schema) -> None:
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        result = wal.measure(wal.LeanStatements(), wal.WalReader(conn), 200, repeats=1)
    # A claim of 100 locks and updates each row; an ack deletes each.
    assert result.claim.records is not None and result.claim.records >= 200
    assert result.claim.by_relation.get("Heap LOCK message", 0) >= 100
    assert result.ack.by_relation.get("Heap DELETE message") == 100
    assert result.drain.records is not None and result.drain.records >= 2 * (200 + 100)
    assert result.send.bytes > 200 * len(BODY_BYTES)
    assert "WAL: records=" in result.explain
    assert lean.waiting() == 0


def test_the_wal_of_mqadmins_ack_is_a_delete_a_message_without_a_lock(lean_schema) -> None:
    # The ack used to lock each row before deleting it: a Heap LOCK record a
    # message beside its Heap DELETE (205 records for an ack of 100).
    from queues import broker
    from queues.models import Message

    broker.put_queue("walack", {})
    queue = broker.get_queue("walack")
    peer_sql = RawSQL(conninfo(), {queue.id: queue})
    peer = wal.MqadminStatements(peer_sql, queue.id, partial(fill_ready, queue.id), lambda: Message.objects.filter(queue=queue).delete())
    try:
        with psycopg.connect(conninfo(), autocommit=True) as conn:
            result = wal.measure(peer, wal.WalReader(conn), 100, repeats=1)
    finally:
        peer_sql.close()
    assert result.ack.by_relation.get("Heap DELETE queues_message") == 100
    assert "Heap LOCK queues_message" not in result.ack.by_relation, result.ack.by_relation
    assert not Message.objects.filter(queue=queue).exists()


def _stat(median: float, *twins: float) -> Stat:
    return Stat([median], twins=list(twins))


def test_the_targets_set_mqadmin_against_the_lean_floor() -> None:
    stats = {
        # publish stream 900 (HTTP 500) against the floor's 1,000: 0.9 and 0.5.
        "produce_batch": {"mqadmin": _stat(900, 500), "raw": _stat(850), "lean": _stat(1000), "rabbitmq": _stat(800)},
        # HTTP 500 (streams 1,100) against the floor's 1,000 and RabbitMQ's 1,000.
        "drain_4": {"mqadmin": _stat(500, 400, 1100), "raw": _stat(600), "lean": _stat(1000), "rabbitmq": _stat(1000)},
        # One consumer: 20 % lower bars, 0.4 and 0.8.
        "drain_1": {"mqadmin": _stat(400, 300, 800), "raw": _stat(500), "lean": _stat(1000), "rabbitmq": _stat(1000)},
        # A consume stream at 3 x Procrastinate and 0.5 x the floor's claim 1 + ack 1.
        "round_trip": {"mqadmin": _stat(300, 150, 100), "raw": _stat(200), "lean": _stat(600), "procrastinate": _stat(100)},
    }
    rows = {r.key: r for r in table_rows(stats, Sizes.tiny(), {"procrastinate": "not selected"})}

    produce = rows["produce_batch"]
    assert produce.vs_lean == "stream 0.90, HTTP 0.50"
    assert (produce.met, produce.floor_met, produce.lean_met) == ("no", "yes", "yes")  # HTTP under 0.6
    assert rows["drain_4"].vs_lean == "HTTP 0.50, streams 1.10"
    assert (rows["drain_4"].met, rows["drain_4"].floor_met, rows["drain_4"].lean_met) == ("yes", "no", "no")
    assert rows["drain_1"].met == "yes"
    assert rows["drain_1"].met_cell() == "yes (raw SQL: no; lean SQL: yes)"
    assert (rows["round_trip"].met, rows["round_trip"].floor_met, rows["round_trip"].lean_met) == ("yes", "no", "yes")
    assert rows["round_trip"].vs_lean == "stream 0.50, HTTP 0.25"
    # mqadmin with async commit has a column of its own; the targets keep to the default.
    stats["drain_4"]["mqadmin_async"] = _stat(100, 100, 110)
    stats["drain_1"]["mqadmin_async"] = _stat(10_000, 10_000, 10_000)
    stats["round_trip"]["mqadmin_async"] = _stat(600, 300, 200)
    rows = {r.key: r for r in table_rows(stats, Sizes.tiny(), {"procrastinate": "not selected"})}
    assert (rows["drain_4"].met, rows["drain_1"].met, rows["round_trip"].met) == ("yes", "yes", "yes")
    assert (rows["drain_4"].ratios["async_vs_default"], rows["drain_4"].ratios["async_streams_vs_default"]) == (0.2, 0.1)
    assert rows["round_trip"].ratios["async_vs_default"] == 2.0
    assert rows["drain_1"].cells["mqadmin_async"].median == 10_000
    assert rows["produce_batch"].cells["mqadmin_async"].cell() == "—"
    # A peer that did not run says why; a target that needs it cannot be judged.
    assert rows["produce_batch"].cells["procrastinate"].skipped == "not selected"
    stats["drain_4"].pop("lean")
    assert next(r for r in table_rows(stats, Sizes.tiny(), {}) if r.key == "drain_4").met == "?"


def test_the_async_commit_column_has_a_server_of_its_own(tmp_path, monkeypatch) -> None:
    from contextlib import contextmanager

    from mqtools.bench import server

    started = []

    @contextmanager
    def serving(env, log_path=None):
        started.append((env, log_path))
        yield "http://127.0.0.1:1"

    monkeypatch.setattr(server.procs, "serving", serving)
    with server.mq_server(tmp_path / "a.log"), server.mq_server(tmp_path / "b.log", {"MQ_ASYNC_COMMIT": "on"}):
        pass
    (default, _), (relaxed, log) = started
    assert default.get("MQ_ASYNC_COMMIT") == os.environ.get("MQ_ASYNC_COMMIT")
    assert relaxed["MQ_ASYNC_COMMIT"] == "on" and log == tmp_path / "b.log"
