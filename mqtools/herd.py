"""Many waiting consumers: a fleet of long polls on one queue, fed by sends.

``N`` consumers long-poll one queue (``wait`` 20, ``max`` 1), each on a
connection of its own, spread over several client processes so that the
clients are not the bottleneck (one Python process with thousands of
sockets measured itself, not the server). Each consumer, once it receives,
polls again with the ack riding on the poll, as ``mq worker`` does, so the
fleet stays ``N`` strong. Then, round after round, ``N`` messages are sent
in batches of 100 and the run records:

- how long each send of 100 takes to be answered, with ``N`` waiting;
- when the last of the ``N`` messages reached a consumer, after the last send;
- every poll that failed: refused (the contract's 503), reset, or any other
  error; a healthy server refuses none of them and resets none.

``python -m mqtools.herd --url URL --token T --consumers 2000`` runs it
against a running server; ``mq bench`` runs it as its "many waiting
consumers" row. The client processes are this module too (``--child``): they
speak HTTP/1.1 over asyncio streams, which keeps a thousand idle sockets
cheap, and report over a pipe, one line per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

QUEUE = "bench-herd"
BATCH = 100
# Consumers per client process.
PER_PROCESS = 500
WAIT_SECONDS = 20
# How long a round waits for its messages to be delivered.
ROUND_TIMEOUT = 15.0


# -- the client processes ----------------------------------------------------


class _Poller:
    """One consumer: a connection and its loop of long polls."""

    def __init__(self, host: str, port: int, token: str, queue: str, out: IO[str], counts: dict[str, int]) -> None:
        self.host, self.port, self.token, self.queue = host, port, token, queue
        self.out, self.counts = out, counts
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def request(self, ack: list[str] | None) -> bytes:
        body: dict[str, Any] = {"max": 1, "wait": WAIT_SECONDS}
        if ack:
            body["ack"] = ack
        data = json.dumps(body).encode()
        head = (
            f"POST /api/v1/queues/{self.queue}/receive HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before an answer")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await self.reader.readexactly(length) if length else b""
        return status, headers, body

    async def run(self, started: asyncio.Event, stop: asyncio.Event, first: list[int], rounds: _Rounds | None) -> None:
        ack: list[str] | None = None
        seen = 0
        announced = False
        while not stop.is_set():
            try:
                if self.writer is None:
                    await self.connect()
                assert self.writer is not None
                self.writer.write(self.request(ack))
                await self.writer.drain()
                if not announced:
                    announced = True
                    first[0] += 1
                    if first[0] == first[1]:
                        started.set()
                status, headers, body = await self.response()
            except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError, IndexError) as exc:
                self.counts["reset"] += 1
                self.out.write(f"e reset {type(exc).__name__}\n")
                self._close()
                await asyncio.sleep(0.5)
                continue
            ack = None
            if status == 503:
                self.counts["refused"] += 1
                retry = float(headers.get("retry-after", "1") or 1)
                self.out.write("e refused\n")
                if headers.get("connection", "").lower() == "close":
                    self._close()
                await asyncio.sleep(retry)
                continue
            if status != 200:
                self.counts["error"] += 1
                self.out.write(f"e status {status}\n")
                await asyncio.sleep(0.5)
                continue
            now = time.time()
            messages = json.loads(body)["messages"]
            for m in messages:
                self.out.write(f"d {m['body']['round']} {now}\n")
            ack = [m["receipt"] for m in messages] or None
            if messages and rounds is not None:
                # One message a round: poll again when the next round starts.
                seen += 1
                await rounds.started(seen)
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _Rounds:
    """The rounds the parent has started (it writes "go" on our stdin)."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    async def started(self, n: int) -> None:
        while self.count < n:
            self.changed.clear()
            await self.changed.wait()

    def next(self) -> None:
        self.count += 1
        self.changed.set()


async def _child(url: str, token: str, queue: str, consumers: int, continuous: bool) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    counts = {"reset": 0, "refused": 0, "error": 0}
    out = sys.stdout
    stop, started = asyncio.Event(), asyncio.Event()
    first = [0, consumers]
    rounds = None if continuous else _Rounds()
    pollers = [_Poller(host, port, token, queue, out, counts) for _ in range(consumers)]
    tasks = [asyncio.create_task(p.run(started, stop, first, rounds)) for p in pollers]
    await started.wait()
    out.write("ready\n")
    out.flush()
    loop = asyncio.get_running_loop()
    flusher = asyncio.create_task(_flush_often(out))
    # The parent writes "go" to start a round, and closes our stdin to stop us.
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "go" and rounds is not None:
            rounds.next()
    stop.set()
    flusher.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.write(f"end {json.dumps(counts)}\n")
    out.flush()


async def _flush_often(out: IO[str]) -> None:
    while True:
        await asyncio.sleep(0.05)
        out.flush()


# -- the driver ----------------------------------------------------------------


@dataclass
class Round:
    sends: list[float]  # seconds each send of BATCH took
    delivered: int
    expected: int
    last_after_send: float | None  # last delivery, seconds after the last send was answered


@dataclass
class HerdResult:
    consumers: int
    rounds: list[Round] = field(default_factory=list)
    waiting_before: int = 0  # receives the server said were waiting before the first send
    reset: int = 0
    refused: int = 0
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def sends(self) -> list[float]:
        return [s for r in self.rounds for s in r.sends]

    def summary(self) -> str:
        sends = sorted(self.sends)
        p50 = statistics.median(sends) * 1000 if sends else float("nan")
        p99 = sends[min(len(sends) - 1, int(len(sends) * 0.99))] * 1000 if sends else float("nan")
        spans = [r.last_after_send for r in self.rounds if r.last_after_send is not None]
        lines = [
            f"{self.consumers:,} consumers waiting (server saw {self.waiting_before:,}); "
            f"polls refused {self.refused}, reset {self.reset}, other errors {self.errors}",
            f"send of {BATCH}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(sends)} sends",
        ]
        for i, r in enumerate(self.rounds):
            span = "never" if r.last_after_send is None else f"{r.last_after_send * 1000:.0f} ms after the last send"
            lines.append(f"round {i + 1}: {r.delivered:,}/{r.expected:,} delivered, the last {span}")
        if spans:
            lines.append(f"last delivery after the last send: median {statistics.median(spans) * 1000:.0f} ms")
        return "\n".join(lines + self.notes)


class _Child:
    def __init__(self, url: str, token: str, queue: str, consumers: int, continuous: bool) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqtools.herd", "--child", "--url", url, "--token", token,
             "--queue", queue, "--consumers", str(consumers), *(["--continuous"] if continuous else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.deliveries: list[tuple[int, float]] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "d":
                r, t = rest.split()
                with self.lock:
                    self.deliveries.append((int(r), float(t)))
            elif kind == "ready":
                self.ready.set()
            elif kind == "end":
                self.counts = json.loads(rest)
        self.ended.set()

    def delivered(self, round_: int) -> list[float]:
        with self.lock:
            return [t for r, t in self.deliveries if r == round_]

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.ended.wait(WAIT_SECONDS + 10)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def waiting_receives(api: httpx.Client, queue: str) -> int:
    """Receives the server says wait on ``queue`` (its /metrics)."""
    text = api.get("/metrics").text
    total = 0
    for line in text.splitlines():
        if line.startswith("mq_waiting_receives{") and f'queue="{queue}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@contextmanager
def _fleet(url: str, token: str, queue: str, consumers: int, continuous: bool) -> Iterator[list[_Child]]:
    sizes = [PER_PROCESS] * (consumers // PER_PROCESS) + ([consumers % PER_PROCESS] if consumers % PER_PROCESS else [])
    children = [_Child(url, token, queue, n, continuous) for n in sizes]
    try:
        yield children
    finally:
        for c in children:
            c.stop()


def run(
    url: str, token: str, *, consumers: int, rounds: int = 3, gap: float = 0.0, continuous: bool = False, queue: str = QUEUE
) -> HerdResult:
    """The fleet against the server at ``url`` (a token with admin scope).
    Each consumer takes one message a round and polls again when the next
    round starts; ``continuous``: it polls again at once, as a worker does,
    so that the sends compete with the consumers' acks and claims."""
    result = HerdResult(consumers)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as api:
        api.put(f"/api/v1/queues/{queue}", json={"visibility_timeout": 60}).raise_for_status()
        api.post(f"/api/v1/queues/{queue}/purge").raise_for_status()
        with _fleet(url, token, queue, consumers, continuous) as children:
            for c in children:
                if not c.ready.wait(60):
                    result.notes.append("a client process did not start its polls within 60 s")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                result.waiting_before = waiting_receives(api, queue)
                if result.waiting_before >= consumers:
                    break
                time.sleep(0.2)
            for r in range(rounds):
                result.rounds.append(_round(api, queue, children, r, consumers, gap))
                for c in children:
                    c.go()
                # Let the fleet settle back into its polls.
                settle = time.monotonic() + 10
                while time.monotonic() < settle and waiting_receives(api, queue) < consumers:
                    time.sleep(0.1)
        for c in children:
            result.reset += c.counts.get("reset", 0)
            result.refused += c.counts.get("refused", 0)
            result.errors += c.counts.get("error", 0)
        api.post(f"/api/v1/queues/{queue}/purge")
    return result


def _round(api: httpx.Client, queue: str, children: list[_Child], r: int, n: int, gap: float = 0.0) -> Round:
    sends: list[float] = []
    body = [{"body": {"round": r, "pad": "x" * 150}}] * BATCH
    for start in range(0, n, BATCH):
        batch = body[: min(BATCH, n - start)]
        t0 = time.perf_counter()
        api.post(f"/api/v1/queues/{queue}/messages", json={"messages": batch}).raise_for_status()
        sends.append(time.perf_counter() - t0)
        if gap and start + BATCH < n:
            time.sleep(gap)
    last_send = time.time()
    deadline = time.monotonic() + ROUND_TIMEOUT
    times: list[float] = []
    while time.monotonic() < deadline:
        times = [t for c in children for t in c.delivered(r)]
        if len(times) >= n:
            break
        time.sleep(0.02)
    # A delivery may come before the client has read its send's answer: 0.
    return Round(sends, len(times), n, max(0.0, max(times) - last_send) if len(times) >= n else None)


def sends_alone(url: str, token: str, *, sends: int, queue: str = QUEUE) -> list[float]:
    """Seconds each of ``sends`` sends of BATCH takes with nobody waiting:
    what a send costs the server on its own."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {"messages": [{"body": {"round": -1, "pad": "x" * 150}}] * BATCH}
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as api:
        api.put(f"/api/v1/queues/{queue}", json={"visibility_timeout": 60}).raise_for_status()
        api.post(f"/api/v1/queues/{queue}/purge").raise_for_status()
        for _ in range(sends):
            t0 = time.perf_counter()
            api.post(f"/api/v1/queues/{queue}/messages", json=body).raise_for_status()
            out.append(time.perf_counter() - t0)
        api.post(f"/api/v1/queues/{queue}/purge").raise_for_status()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--queue", default=QUEUE)
    parser.add_argument("--consumers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--continuous", action="store_true", help="consumers poll again at once, as workers do")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between two sends of a round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(_child(args.url, args.token, args.queue, args.consumers, args.continuous))
        return
    print(run(args.url, args.token, consumers=args.consumers, rounds=args.rounds, gap=args.gap, continuous=args.continuous).summary())


if __name__ == "__main__":
    main()
