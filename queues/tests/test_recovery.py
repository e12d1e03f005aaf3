"""Crash recovery for real: a worker process killed with SIGKILL while it
holds messages, and (on PostgreSQL) a monitor killed while it leads."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from mqclient import Client

from queues.models import Token
from queues.monitor import LEADER_LOCK_KEY

from .live import ROOT, live_server, subprocess_env
from .workers import read_log, start_worker, stop, wait_for

HEARTBEAT_TIMEOUT = 2  # seconds: the least the server accepts, so the test is short

# --------------------------------------------------------------------------- #
# Monitor failover (first: no server of this module may hold the lead yet)
# --------------------------------------------------------------------------- #


def lock_holders() -> list[int]:
    """Backend pids holding the monitors' advisory lock in this database."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s AND d.datname = current_database()",
            [LEADER_LOCK_KEY & 0xFFFFFFFF],
        )
        return [row[0] for row in cur.fetchall()]


def start_monitor(log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "mq", "monitor"],
            cwd=ROOT,
            env=subprocess_env(MQ_LOG_LEVEL="INFO"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def leads(log: Path) -> int:
    return log.read_text().count("monitor is now the leader")


@pytest.mark.django_db(transaction=True)
def test_monitor_failover_on_postgresql(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("leader election by advisory lock is PostgreSQL's; SQLite runs on one machine")
    assert lock_holders() == [], "another monitor leads on the test database"
    logs = [tmp_path / "m0.log", tmp_path / "m1.log"]
    monitors = [start_monitor(log) for log in logs]
    try:
        wait_for(lambda: sum(leads(log) for log in logs) == 1, timeout=20)
        leader = next(i for i in (0, 1) if leads(logs[i]))
        assert len(lock_holders()) == 1

        # The leader loses its database session (its lock connection is
        # killed): it gives up the lead, and a monitor leads again.
        with connection.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [lock_holders()[0]])
        wait_for(lambda: "lost its database session" in logs[leader].read_text(), timeout=10)
        wait_for(lambda: len(lock_holders()) == 1, timeout=5)

        # The leader dies outright: the other takes over within a few seconds.
        current = wait_for(lambda: current_leader(logs), timeout=5) - 1
        before = [leads(log) for log in logs]
        monitors[current].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        other = 1 - current
        wait_for(lambda: leads(logs[other]) > before[other], timeout=5)
        took = time.monotonic() - killed_at
        assert len(lock_holders()) == 1
        print(f"monitor failover took {took:.2f} s")
    finally:
        for proc in monitors:
            stop(proc)


def current_leader(logs: list[Path]) -> int | None:
    """1 + the index of the monitor leading now: the one whose latest lead
    came after its latest loss of the session (None while nobody has)."""
    for i, log in enumerate(logs):
        text = log.read_text()
        last_lead = text.rfind("monitor is now the leader")
        if last_lead >= 0 and last_lead > text.rfind("lost its database session"):
            return i + 1
    return None


# --------------------------------------------------------------------------- #
# A worker killed while holding messages
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with live_server() as url:
        yield url


def test_killed_workers_messages_are_redelivered_within_heartbeat_timeout(server, transactional_db, tmp_path):
    _t, token = Token.issue(f"t-{secrets.token_hex(4)}", ["admin"])
    client = Client(server, token)
    # The lease is a minute: only the heartbeat can bring the messages back in time.
    client.put_queue("jobs", visibility_timeout=60)
    log = tmp_path / "log"
    common = ["--queue", "jobs", "--concurrency", "2", "--prefetch", "2", "--poll-wait", "1"]
    common += ["--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)]
    doomed = start_worker(server, token, log, *common, name="doomed", stall=True)
    survivor = None
    try:
        wait_for(lambda: any(c["name"] == "doomed" for c in client.consumers()), timeout=20)
        ids = [m["id"] for m in client.send_batch("jobs", [{"body": {"sleep": 0.1, "n": i}} for i in range(10)])]
        # It starts two (and stalls in them) and holds two more it has not started.
        wait_for(lambda: len(read_log(log)) == 2, timeout=10)
        doomed_row = wait_for(
            lambda: next((c for c in client.consumers() if c["name"] == "doomed" and c["in_flight"] == 4), None),
            timeout=5,
        )
        survivor = start_worker(server, token, log, *common, name="survivor")
        # The survivor takes the six nobody holds...
        wait_for(lambda: sum(e.event == "done" for e in read_log(log)) == 6, timeout=20)
        held_started = {e.message for e in read_log(log) if e.worker == "doomed"}
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.time()
        # ...and, once the monitor declares the doomed one dead, the four it held.
        wait_for(lambda: sum(e.event == "done" for e in read_log(log)) == 10, timeout=HEARTBEAT_TIMEOUT + 10)
        # The survivor is killed below: let its last ack land first (a worker
        # logs "done" before it acks).
        wait_for(lambda: client.get_queue("jobs")["in_flight"] == 0, timeout=10)
        # The survivor's background heartbeats kept it alive all along (one
        # registration, never declared dead), though its timeout is 2 s.
        survivors = [c for c in client.consumers() if c["name"] == "survivor"]
        assert [c["status"] for c in survivors] == ["alive"]
    finally:
        stop(doomed)
        if survivor is not None:
            stop(survivor)
    entries = read_log(log)
    done = [e.message for e in entries if e.event == "done"]
    assert sorted(done) == sorted(ids)  # none lost, each finished once
    redelivered = [e for e in entries if e.event == "start" and e.delivery == 2]
    assert len(redelivered) == 4 and all(e.worker == "survivor" for e in redelivered)
    recovery = max(e.at for e in redelivered) - killed_at
    print(f"recovery: all 4 held messages restarted {recovery:.2f} s after SIGKILL")
    assert recovery <= HEARTBEAT_TIMEOUT + 2
    # Only what it had started is processed twice; what it held unstarted, once.
    starts: dict[str, int] = {}
    for e in entries:
        if e.event == "start":
            starts[e.message] = starts.get(e.message, 0) + 1
    assert {m for m, n in starts.items() if n == 2} == held_started
    assert len(held_started) == 2
    status = next(c for c in client.consumers() if c["id"] == doomed_row["id"])["status"]
    assert status == "dead"
    counts = client.get_queue("jobs")
    assert (counts["ready"], counts["in_flight"]) == (0, 0)
