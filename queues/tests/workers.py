"""Worker processes for the tests that run real ones (``mq worker`` against
a live ``mq serve``), and the handler they run.

The handler logs one line per event to ``$MQ_TEST_LOG`` (O_APPEND writes of
one short line are atomic, so several processes can share the file):
``<event> <message id> <worker> <epoch> <delivery count>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .live import ROOT, subprocess_env


def start_worker(
    url: str, token: str, log_path: Path, *args: str, name: str, stall: bool = False
) -> subprocess.Popen[bytes]:
    """``mq worker --handler queues.tests.workers:record`` as a process."""
    env = subprocess_env(MQ_URL=url, MQ_TOKEN=token, MQ_TEST_LOG=str(log_path), MQ_TEST_WORKER=name)
    if stall:
        env["MQ_TEST_STALL"] = "1"
    cmd = [sys.executable, str(ROOT / "manage.py"), "mq", "worker", "--handler", "queues.tests.workers:record"]
    cmd += ["--name", name, "--log-level", "WARNING", *args]
    # Its warnings go beside the log, for the reader of a failed test.
    with open(log_path.with_name(f"{log_path.name}.{name}.err"), "wb") as err:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """End a process we started (SIGKILL if it will not go); its exit code."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout)


# --------------------------------------------------------------------------- #
# Handlers (run inside worker processes)
# --------------------------------------------------------------------------- #


def _log(event: str, message: Any) -> None:
    line = f"{event} {message.id} {os.environ.get('MQ_TEST_WORKER', '?')} {time.time():.3f} {message.delivery_count}\n"
    fd = os.open(os.environ["MQ_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(message: Any) -> None:
    """Log start, work for ``body["sleep"]`` seconds (a stalled worker: a
    minute), log done."""
    _log("start", message)
    seconds = 60.0 if os.environ.get("MQ_TEST_STALL") else float((message.body or {}).get("sleep", 0))
    time.sleep(seconds)
    _log("done", message)


@dataclass(frozen=True)
class Entry:
    event: str
    message: str
    worker: str
    at: float
    delivery: int


def read_log(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        event, mid, worker, at, delivery = line.split()
        entries.append(Entry(event, mid, worker, float(at), int(delivery)))
    return entries


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; returns it, or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)
