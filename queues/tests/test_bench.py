"""`mq bench` keeps working: every scenario runs end to end at toy sizes.

No speed is asserted here (this machine's speed is not the code's); the
table's shape and the honesty of its cells are."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from mqtools import bench
from mqtools.bench import rabbitmq

pytestmark = pytest.mark.django_db(transaction=True)

SCENARIOS = ["produce_batch", "produce_single", "drain_1", "drain_4", "round_trip", "windowed", "latency", "claim_big", "dashboard_counts", "dashboard_tick", "fifo"]


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
    assert md.splitlines()[0].startswith("| scenario | mqadmin | raw SQL | RabbitMQ | Procrastinate | target | met? |")
    for row in data["rows"]:
        mq = row["cells"]["mqadmin"]
        assert mq["skipped"] is None, (row["key"], mq["skipped"])
        assert mq["median"] > 0, row["key"]
        assert row["met"] in ("yes", "no", "?", "—")
        assert row["floor_met"] in ("yes", "no", "?", "—")
    # Raw SQL runs wherever mqadmin does; each other peer either ran or says why not.
    by_key = {row["key"]: row for row in data["rows"]}
    assert by_key["produce_batch"]["cells"]["raw"]["median"] > 0
    for peer in ("rabbitmq", "procrastinate"):
        cell = by_key["produce_batch"]["cells"][peer]
        assert (cell["median"] or 0) > 0 or cell["skipped"], (peer, cell)
    assert "Machine:" in md
    # The streams are measured beside the HTTP calls, in mqadmin's notes.
    assert "publish stream" in by_key["produce_batch"]["cells"]["mqadmin"]["note"]
    assert "consume stream" in by_key["latency"]["cells"]["mqadmin"]["note"]
    assert "consume stream" in by_key["windowed"]["cells"]["mqadmin"]["note"]
    # Where a target names another peer, the table says whether the raw SQL
    # floor meets it too.
    for key in ("produce_batch", "drain_1", "drain_4", "round_trip", "latency"):
        assert by_key[key]["floor_met"] in ("yes", "no"), key
    assert "(raw SQL: " in next(line for line in md.splitlines() if line.startswith("| 4. one message"))
    # What PostgreSQL alone spends on a message, beside the raw drain.
    costs = re.search(r"claim (\d+) µs \+ ack (\d+) µs a message", by_key["drain_1"]["cells"]["raw"]["note"])
    assert costs and int(costs[1]) > 0 and int(costs[2]) > 0, by_key["drain_1"]["cells"]["raw"]["note"]
    # The FIFO row weighs the crowd against one consumer and a standard queue.
    assert all(v > 0 for v in by_key["fifo"]["ratios"].values()), by_key["fifo"]["ratios"]
    assert "with 1:" in by_key["fifo"]["cells"]["mqadmin"]["note"]
    # The dashboard's thousand queues are not left behind.
    from queues.models import Queue

    assert not Queue.objects.filter(name__startswith="bench-dash-").exists()
