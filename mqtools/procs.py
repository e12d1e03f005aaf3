"""Starting and stopping real processes: `mq serve` nodes (and anything else
with a /healthz), fresh PostgreSQL databases. Shared by the tests that need a
live server and by `make chaos`, `make soak` and `mq bench`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, *, what: str = "mq serve", timeout: float = START_SECONDS,
                  log: Path | None = None, ok: tuple[int, ...] = (200,)) -> None:
    """Poll ``url``/healthz until it answers; raise with the log's tail if the
    process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.1)


def _tail(log: Path | None) -> str:
    return log.read_text()[-2000:] if log is not None and log.exists() else ""


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(port: int, env: dict[str, str], log: IO[str] | int = subprocess.DEVNULL,
                 log_path: Path | None = None, ok: tuple[int, ...] = (200,)) -> subprocess.Popen:
    """`manage.py mq serve --port PORT` with ``env``, once it answers /healthz."""
    proc = subprocess.Popen([PY, "manage.py", "mq", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT if log is not subprocess.DEVNULL else log)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc, log=log_path, ok=ok)
    except BaseException:
        stop(proc)
        raise
    return proc


@contextmanager
def serving(env: dict[str, str], port: int | None = None, log_path: Path | None = None) -> Iterator[str]:
    """A running `mq serve` for the block; yields its base URL."""
    port = port or free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = start_server(port, env, log, log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        if log_path:
            log.close()  # type: ignore[union-attr]


def manage(env: dict[str, str], *args: str) -> str:
    """Run a management command in a child process; its standard output."""
    return subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True).stdout


def fresh_database(database_url: str) -> dict[str, str]:
    """Drop and re-create a PostgreSQL database, migrate it; returns an
    environment pointing at it."""
    import psycopg

    base, _, name = database_url.rpartition("/")
    with psycopg.connect(f"{base.replace('postgres://', 'postgresql://', 1)}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = dict(os.environ, DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    manage(env, "migrate", "--no-input", "-v0")
    return env


def issue_token(env: dict[str, str], name: str, scopes: str = "produce,consume,admin") -> str:
    return manage(env, "mq", "token", "create", name, "--scope", scopes).strip().splitlines()[-1]
