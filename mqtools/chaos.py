"""`make chaos`: producers and workers run while we break things, then a
ledger proves nothing was lost.

Runs two `mq serve` nodes on one PostgreSQL database of its own, producers
sending numbered messages with dedup ids (retrying through failures with the
same ids), and worker processes that write every message they process to a
ledger file before acking it (every other one on a consume stream, the
rest over HTTP). Meanwhile: workers are SIGKILLed at random, a
server node is SIGKILLed and restarted, PostgreSQL is restarted, the second
node is killed while the first carries on. At the end every produced message
must have been processed or dead-lettered; duplicates are counted and must
each be explained by a death (a killed worker, or an ack that never landed).

    python -m mqtools.chaos [--seconds 120] [--workers 3]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from mqclient import Client

from mqtools import procs
from mqtools.procs import PY, ROOT

QUEUE = "chaos"
DLQ = "chaos-dlq"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------- worker --


def worker_main(urls: list[str], token: str, ledger: Path, stop_after: float) -> None:
    """A consumer process: receive, record, ack. Killed at random by the harness."""
    headers = {"Authorization": f"Bearer {token}"}
    out = open(ledger, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    clients = [httpx.Client(base_url=u, headers=headers, timeout=10) for u in urls]
    deadline = time.monotonic() + stop_after
    turn = 0
    while time.monotonic() < deadline:
        client = clients[turn % len(clients)]
        try:
            r = client.post(f"/api/v1/queues/{QUEUE}/receive", json={"max": 10, "wait": 1})
            if r.status_code != 200:
                turn += 1
                time.sleep(0.2)
                continue
            messages = r.json()["messages"]
        except httpx.HTTPError:
            turn += 1
            time.sleep(0.2)
            continue
        for m in messages:
            # Written (and flushed to the OS) before the ack: a message is
            # "processed" once it is here, whatever happens to us next.
            out.write(f"done {m['body']['seq']} {m['id']} {m['delivery_count']}\n")
            os.fsync(out.fileno())
        time.sleep(random.uniform(0, 0.03))  # the "work"
        if not messages:
            continue
        receipts = [m["receipt"] for m in messages]
        try:
            r = client.post(f"/api/v1/queues/{QUEUE}/ack", json={"receipts": receipts})
            ok = r.status_code == 200
            stale = set(r.json().get("stale", [])) if ok else set(receipts)
        except httpx.HTTPError:
            stale = set(receipts)
        for m in messages:
            if m["receipt"] in stale:
                out.write(f"ackfail {m['body']['seq']} {m['id']}\n")
        out.flush()


def stream_worker_main(urls: list[str], token: str, ledger: Path, stop_after: float) -> None:
    """As ``worker_main``, on a consume stream (mqclient's): deliveries are
    pushed, acks go back as frames. An ack whose answer never came (the
    stream broke first) or came back stale is an ``ackfail``: answers come in
    the order the acks were sent."""
    out = open(ledger, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    deadline = time.monotonic() + stop_after
    turn = 0
    while time.monotonic() < deadline:
        url = urls[turn % len(urls)]
        turn += 1
        sent: list[tuple[int, str, str]] = []  # (seq, id, receipt) acked on this stream, in order
        stream = None
        try:
            with Client(url, token, timeout=10).consume(QUEUE, prefetch=10) as stream:
                while time.monotonic() < deadline:
                    messages = stream.receive(timeout=1)
                    for m in messages:
                        out.write(f"done {m.body['seq']} {m.id} {m.delivery_count}\n")
                        os.fsync(out.fileno())
                    time.sleep(random.uniform(0, 0.03))  # the "work"
                    if messages:
                        sent += [(m.body["seq"], m.id, m.receipt) for m in messages]  # before: the send may fail
                        stream.ack([m.receipt for m in messages])
        except Exception:  # a node or the database went away: open another stream
            time.sleep(0.2)
        if stream is not None:
            answered, stale = stream.acked + len(stream.stale), set(stream.stale)
            for i, (seq, mid, receipt) in enumerate(sent):
                if i >= answered or receipt in stale:
                    out.write(f"ackfail {seq} {mid}\n")
            out.flush()


# -------------------------------------------------------------------- harness --


class Harness:
    def __init__(self, seconds: float, workers: int, database_url: str, restart_pg: bool = True) -> None:
        self.restart_pg = restart_pg
        self.seconds = seconds
        self.n_workers = workers
        self.database_url = database_url
        self.workdir = ROOT / "chaos-run"
        self.env = dict(os.environ, DATABASE_URL=database_url, MQ_MONITOR="on", PYTHONUNBUFFERED="1")
        self.ports = [procs.free_port(), procs.free_port()]
        self.nodes: dict[int, subprocess.Popen[bytes] | None] = {p: None for p in self.ports}
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.killed_workers: list[int] = []
        self.ledgers: dict[int, Path] = {}
        self.killed_ledgers: set[str] = set()
        self.produced: set[int] = set()
        self.statuses: Counter[str] = Counter()
        self.faults: list[str] = []
        self.stop = threading.Event()
        self.token = ""

    def manage(self, *args: str) -> str:
        return procs.manage(self.env, *args)

    def setup(self) -> None:
        self.env.update(procs.fresh_database(self.database_url), MQ_MONITOR="on")
        self.token = procs.issue_token(self.env, "chaos")
        self.manage("mq", "queue", "create", DLQ)
        self.manage("mq", "queue", "create", QUEUE, "--visibility-timeout", "4", "--max-deliveries", "20", "--dead-letter", DLQ)
        self.workdir.mkdir(exist_ok=True)
        for f in self.workdir.glob("*"):
            f.unlink()

    # -- processes ------------------------------------------------------------

    def start_node(self, port: int) -> None:
        log_path = self.workdir / f"node-{port}.log"
        with open(log_path, "a") as log:
            # 503 is up too: a node answers while PostgreSQL restarts.
            self.nodes[port] = procs.start_server(port, self.env, log, log_path, ok=(200, 503))

    def kill_node(self, port: int) -> None:
        proc = self.nodes[port]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.nodes[port] = None

    def start_worker(self, k: int) -> None:
        urls = ",".join(f"http://127.0.0.1:{p}" for p in self.ports)
        self.ledgers[k] = self.workdir / f"worker-{k}-{len(self.killed_workers)}.ledger"
        self.workers[k] = subprocess.Popen(
            [PY, "-m", "mqtools.chaos", "worker", "--urls", urls, "--token", self.token,
             "--ledger", str(self.ledgers[k]),
             "--stop-after", str(self.seconds + 120),
             # Every other worker consumes on a stream, the others over HTTP.
             *(["--stream"] if k % 2 else [])],
            cwd=ROOT, env=self.env,
        )

    # -- producers -------------------------------------------------------------

    def producer(self, pid: int, seqs: range) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=headers, timeout=10) for p in self.ports]
        turn = pid
        batch: list[int] = []
        it = iter(seqs)
        while not self.stop.is_set():
            if not batch:
                batch = [s for _, s in zip(range(10), it, strict=False)]
                if not batch:
                    return
            body = {"messages": [{"body": {"seq": s, "pad": "x" * 150}, "dedup_id": f"seq-{s}"} for s in batch]}
            client = clients[turn % len(clients)]
            try:
                r = client.post(f"/api/v1/queues/{QUEUE}/messages", json=body)
                self.statuses[str(r.status_code)] += 1
                if r.status_code == 201:
                    self.produced.update(batch)
                    batch = []
                    time.sleep(0.02)
                    continue
            except httpx.HTTPError as exc:
                self.statuses[type(exc).__name__] += 1
            # The same batch again, same dedup ids, maybe on the other node.
            turn += 1
            time.sleep(0.3)

    # -- the run ---------------------------------------------------------------

    def fault(self, what: str) -> None:
        self.faults.append(f"{time.strftime('%H:%M:%S')} {what}")
        log(what)

    def chaos(self) -> None:
        start = time.monotonic()
        plan = [
            (0.25, "kill node A", lambda: self.kill_node(self.ports[0])),
            (0.32, "restart node A", lambda: self.start_node(self.ports[0])),
            *([(0.45, "restart PostgreSQL", restart_postgres)] if self.restart_pg else []),
            (0.65, "kill node B (A carries on)", lambda: self.kill_node(self.ports[1])),
            (0.75, "restart node B", lambda: self.start_node(self.ports[1])),
        ]
        next_worker_kill = start + 3
        while not self.stop.is_set():
            elapsed = (time.monotonic() - start) / self.seconds
            if elapsed >= 1:
                return
            while plan and elapsed >= plan[0][0]:
                _, what, action = plan.pop(0)
                self.fault(what)
                action()
            if time.monotonic() >= next_worker_kill:
                k = random.randrange(self.n_workers)
                self.workers[k].send_signal(signal.SIGKILL)
                self.workers[k].wait()
                self.killed_workers.append(k)
                self.killed_ledgers.add(self.ledgers[k].name)
                self.fault(f"SIGKILL worker {k}; starting a fresh one")
                self.start_worker(k)
                next_worker_kill = time.monotonic() + random.uniform(2, 5)
            time.sleep(0.1)

    def counts(self) -> dict[str, Any]:
        for port in self.ports:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/queues/{QUEUE}", headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                continue
        return {}

    def run(self) -> int:
        self.setup()
        for port in self.ports:
            self.start_node(port)
        for k in range(self.n_workers):
            self.start_worker(k)
        total = 1_000_000
        producers = [threading.Thread(target=self.producer, args=(i, range(i, total, 2))) for i in range(2)]
        for t in producers:
            t.start()
        log(f"running {self.seconds:.0f} s of chaos: 2 nodes {self.ports}, {self.n_workers} workers, 2 producers")
        self.chaos()
        self.stop.set()
        for t in producers:
            t.join()
        log(f"producers stopped after {len(self.produced)} messages; draining")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            c = self.counts()
            if c and c["ready"] + c["in_flight"] + c["delayed"] == 0:
                break
            time.sleep(1)
        for proc in self.workers.values():
            proc.terminate()
        for port in self.ports:
            self.kill_node(port)
        return self.report()

    def report(self) -> int:
        processed: Counter[int] = Counter()
        ids_of: dict[int, set[str]] = defaultdict(set)
        ack_failed: set[int] = set()
        held_by_killed: set[int] = set()
        for ledger in self.workdir.glob("*.ledger"):
            for line in ledger.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "done":
                    processed[int(parts[1])] += 1
                    if ledger.name in self.killed_ledgers:
                        held_by_killed.add(int(parts[1]))
                    ids_of[int(parts[1])].add(parts[2])
                elif len(parts) >= 3 and parts[0] == "ackfail":
                    ack_failed.add(int(parts[1]))
        dead = self._dead_lettered()
        lost = sorted(self.produced - set(processed) - dead)
        dupes = {s: n for s, n in processed.items() if n > 1}
        dedup_broken = sorted(s for s, ids in ids_of.items() if len(ids) > 1)
        # A duplicate is explained when a worker that processed it was killed
        # (before its ack landed) or its ack failed (a node or the database
        # was down): then redelivery is the at-least-once promise at work.
        unexplained = sorted(s for s in dupes if s not in ack_failed and s not in held_by_killed)
        rows = [
            ("produced (acknowledged by the server)", len(self.produced)),
            ("processed at least once", len(processed)),
            ("dead-lettered", len(dead)),
            ("processed more than once", len(dupes)),
            ("  explained: its ack failed (node or database down)", len([s for s in dupes if s in ack_failed])),
            ("  explained: a worker holding it was killed", len([s for s in dupes if s in held_by_killed and s not in ack_failed])),
            ("  unexplained", len(unexplained)),
            ("dedup failures (one seq, two message ids)", len(dedup_broken)),
            ("LOST", len(lost)),
        ]
        print("\nchaos ledger")
        print("-" * 60)
        for label, value in rows:
            print(f"{label:52} {value:>7}")
        print("-" * 60)
        print("faults:", *self.faults, sep="\n  ")
        print("producer answers:", dict(self.statuses))
        ok = not lost and not dedup_broken and not unexplained and self.statuses.get("500", 0) == 0 and self.produced
        print("RESULT:", "OK: nothing lost" if ok else f"FAILED lost={lost[:20]} dedup={dedup_broken[:20]} unexplained={unexplained[:20]}")
        return 0 if ok else 1

    def _dead_lettered(self) -> set[int]:
        import psycopg

        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://", 1)) as c:
            rows = c.execute(
                "SELECT m.body FROM queues_message m JOIN queues_queue q ON q.id = m.queue_id WHERE q.name = %s",
                [DLQ],
            ).fetchall()
        import json

        return {json.loads(b)["seq"] for (b,) in rows}


def restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mqtools.chaos", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--urls", required=True)
    w.add_argument("--token", required=True)
    w.add_argument("--ledger", required=True)
    w.add_argument("--stop-after", type=float, default=600)
    w.add_argument("--stream", action="store_true", help="Consume on a consume stream instead of HTTP.")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--no-pg-restart", action="store_true", help="Leave PostgreSQL running.")
    parser.add_argument("--database-url", default=os.environ.get("CHAOS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mqchaos"))
    args = parser.parse_args(argv)
    if args.cmd == "worker":
        run = stream_worker_main if args.stream else worker_main
        run(args.urls.split(","), args.token, Path(args.ledger), args.stop_after)
        return 0
    return Harness(args.seconds, args.workers, args.database_url, restart_pg=not args.no_pg_restart).run()


if __name__ == "__main__":
    sys.exit(main())
