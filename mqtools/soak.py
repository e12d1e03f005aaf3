"""`make soak`: sustained produce/consume at a fixed rate with a dashboard
socket open, sampling the server's memory, request latency and the size of
the messages table. Flat lines are the pass mark.

    python -m mqtools.soak [--seconds 300] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import threading
import time

import httpx
import psutil

from mqtools import procs
from mqtools.procs import ROOT

QUEUE = "soak"
SAMPLE_SECONDS = 10.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Soak:
    def __init__(self, seconds: float, rate: int, database_url: str) -> None:
        self.seconds = seconds
        self.rate = rate
        self.database_url = database_url
        self.env = dict(os.environ, DATABASE_URL=database_url, MQ_MONITOR="on", PYTHONUNBUFFERED="1")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.send_ms: list[float] = []
        self.e2e_ms: list[float] = []
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.ws_messages = 0

    def setup(self) -> None:
        self.env.update(procs.fresh_database(self.database_url), MQ_MONITOR="on")
        self.token = procs.issue_token(self.env, "soak")
        out = procs.manage(self.env, "mq", "operator")
        self.password = re.search(r"password: (\S+)", out).group(1)  # type: ignore[union-attr]
        procs.manage(self.env, "mq", "queue", "create", QUEUE)
        self.port = procs.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(ROOT / "soak-server.log", "w")  # noqa: SIM115 - the server's lifetime
        self.server = procs.start_server(self.port, self.env, self.log, ROOT / "soak-server.log")

    def session_cookie(self) -> str:
        with httpx.Client(base_url=self.base) as c:
            c.get("/admin/login/")
            csrf = c.cookies["csrftoken"]
            c.post(
                "/admin/login/?next=/",
                data={"username": "operator", "password": self.password, "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"{self.base}/admin/login/"},
            )
            return f"sessionid={c.cookies['sessionid']}; csrftoken={csrf}"

    def dashboard(self) -> None:
        import websockets
        from websockets.typing import Origin

        async def watch() -> None:
            headers = {"Cookie": self.session_cookie()}
            async with websockets.connect(
                f"ws://127.0.0.1:{self.port}/ws/dashboard/", additional_headers=headers, origin=Origin(self.base)
            ) as ws:
                while not self.stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), 1)
                        self.ws_messages += 1
                    except TimeoutError:
                        continue

        try:
            asyncio.run(watch())
        except Exception as exc:  # reported, not fatal: the soak is about the server
            print(f"dashboard socket closed: {exc!r}", flush=True)

    def producer(self) -> None:
        client = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        batch = 10
        interval = batch / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            body = {"messages": [{"body": {"t": time.time(), "pad": "x" * 150}} for _ in range(batch)]}
            start = time.perf_counter()
            try:
                r = client.post(f"/api/v1/queues/{QUEUE}/messages", json=body)
                ok = r.status_code == 201
            except httpx.HTTPError:
                ok = False
            with self.lock:
                self.send_ms.append((time.perf_counter() - start) * 1000)
                self.sent += batch if ok else 0
                self.errors += 0 if ok else 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def consumer(self) -> None:
        client = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        while not self.stop.is_set():
            try:
                r = client.post(f"/api/v1/queues/{QUEUE}/receive", json={"max": 50, "wait": 1})
                messages = r.json()["messages"] if r.status_code == 200 else []
                now = time.time()
                if messages:
                    client.post(f"/api/v1/queues/{QUEUE}/ack", json={"receipts": [m["receipt"] for m in messages]})
                with self.lock:
                    self.e2e_ms.extend((now - m["body"]["t"]) * 1000 for m in messages)
                    self.acked += len(messages)
            except httpx.HTTPError:
                with self.lock:
                    self.errors += 1

    def table_stats(self) -> tuple[int, int, int]:
        import psycopg

        with psycopg.connect(self.database_url.replace("postgres://", "postgresql://", 1)) as c:
            row = c.execute(
                "SELECT (SELECT count(*) FROM queues_message), pg_total_relation_size('queues_message'), "
                "(SELECT coalesce(max(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname = 'queues_message')"
            ).fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        rows, size, dead = row
        return rows, size, dead

    def run(self) -> int:
        self.setup()
        threads = [threading.Thread(target=f, daemon=True) for f in (self.dashboard, self.producer, self.consumer, self.consumer)]
        for t in threads:
            t.start()
        proc = psutil.Process(self.server.pid)
        samples = []
        start = time.monotonic()
        print(f"soak: {self.rate} msg/s for {self.seconds:.0f} s against {self.base}, dashboard socket open", flush=True)
        print(f"{'t (s)':>6} {'server RSS MiB':>14} {'send p50 ms':>11} {'send p99 ms':>11} {'e2e p50 ms':>10} "
              f"{'rows':>6} {'table KiB':>9} {'dead tup':>8} {'sent':>8} {'acked':>8} {'ws msgs':>7}", flush=True)
        while time.monotonic() - start < self.seconds:
            time.sleep(SAMPLE_SECONDS)
            with self.lock:
                send, e2e = self.send_ms, self.e2e_ms
                self.send_ms, self.e2e_ms = [], []
            rss = proc.memory_info().rss / 2**20
            rows, size, dead = self.table_stats()
            sample = (time.monotonic() - start, rss, statistics.median(send) if send else float("nan"),
                      pct(send, 0.99), statistics.median(e2e) if e2e else float("nan"), rows, size / 1024, dead)
            samples.append(sample)
            print(f"{sample[0]:6.0f} {rss:14.1f} {sample[2]:11.1f} {sample[3]:11.1f} {sample[4]:10.1f} "
                  f"{rows:6d} {size / 1024:9.0f} {dead:8d} {self.sent:8d} {self.acked:8d} {self.ws_messages:7d}", flush=True)
        self.stop.set()
        time.sleep(2)
        self.server.terminate()
        self.server.wait(10)
        return self.verdict(samples)

    def verdict(self, samples: list[tuple]) -> int:
        if len(samples) < 3:
            print("too short to judge (need 3 samples)")
            return 0
        warm = samples[1]
        last = samples[-1]
        rss_growth = (last[1] - warm[1]) / warm[1]
        max_rows = max(s[5] for s in samples)
        checks = [
            (f"server memory flat: {warm[1]:.0f} -> {last[1]:.0f} MiB ({rss_growth:+.0%})", rss_growth < 0.25),
            (f"send latency flat: p50 {warm[2]:.1f} -> {last[2]:.1f} ms", last[2] < max(3 * warm[2], warm[2] + 20)),
            (f"table holds only live work: at most {max_rows} rows at {self.rate} msg/s", max_rows < self.rate * 10),
            (f"dashboard socket got {self.ws_messages} pushes", self.ws_messages > 0),
            (f"client errors: {self.errors}", self.errors == 0),
        ]
        for text, ok in checks:
            print(f"  {'ok ' if ok else 'BAD'} {text}")
        return 0 if all(ok for _, ok in checks) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m mqtools.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--rate", type=int, default=200, help="messages per second produced (and consumed)")
    parser.add_argument("--database-url", default=os.environ.get("SOAK_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/mqsoak"))
    args = parser.parse_args()
    return Soak(args.seconds, args.rate, args.database_url).run()


if __name__ == "__main__":
    sys.exit(main())
