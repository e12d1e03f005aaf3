"""What `mq serve` sets up around daphne: the status lines' reason phrases,
and `--workers N`, N daphne processes sharing one listening socket.

One process runs Python on one core at a time. With N workers the parent binds
the port once and starts N children (`mq serve --fd`), each a full node:
daphne, the API, the dashboard's sockets, a monitor (leader-elected, so one
acts). The kernel hands each new connection to one of them. The parent
restarts a child that dies and stops them all on SIGTERM/SIGINT.

Several processes are one broker only where the broker is shared: PostgreSQL
(wake-ups cross processes with NOTIFY; SQLite's are in-process) and Redis for
the channel layer (the dashboard's events, from whichever process made them).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from typing import Any, Protocol

from django.conf import settings
from django.core.management.base import CommandError

# Connections the kernel queues for the server before it accepts them.
# Twisted listens with a backlog of 50: hundreds of consumers connecting at
# once (a fleet starting its long polls) had their connections reset.
LISTEN_BACKLOG = 1024
# How long children get to finish their requests on a stop.
STOP_SECONDS = 10.0
# A child that dies sooner than this after its start is restarted after a
# pause; this many such deaths in a row (a broken setup) stop everything.
MIN_LIFETIME_SECONDS = 5.0
MAX_QUICK_DEATHS = 5


class Output(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


def add_reason_phrases() -> None:
    """Give Twisted (under daphne) the reason phrases it lacks (422, 429 …).
    ASGI carries only the status code, and Twisted writes "Unknown Status"
    after a code missing from its table."""
    from http import HTTPStatus

    from twisted.web import http

    for status in HTTPStatus:
        http.RESPONSES.setdefault(status.value, status.phrase.encode())


def sharing_problem(engine: str, channel_layer_url: str, host: str) -> str | None:
    """Why several processes could not serve as one broker here, or None."""
    if engine != "django.db.backends.postgresql":
        return (
            "--workers above 1 needs PostgreSQL (DATABASE_URL): on SQLite a message sent to one "
            "process would not wake a long poll waiting in another."
        )
    if not channel_layer_url:
        return (
            "--workers above 1 needs Redis for the channel layer (CHANNEL_LAYER_URL): the dashboard "
            "must see the events of every process."
        )
    if ":" in host:
        return "--workers above 1 binds an IPv4 address (or 0.0.0.0), not an IPv6 one."
    return None


def check_can_share(host: str) -> None:
    problem = sharing_problem(settings.DATABASES["default"]["ENGINE"], settings.CHANNEL_LAYER_URL, host)
    if problem:
        raise CommandError(problem)


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket on ``host:port``, with LISTEN_BACKLOG,
    inheritable (daphne serves it with ``--fd``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve_workers(host: str, port: int, workers: int, child_args: list[str], out: Output) -> int:
    """Bind ``host:port``, run ``workers`` children on it until told to stop."""
    check_can_share(host)
    sock = listen(host, port)
    fd = sock.fileno()
    command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "mq", "serve", "--fd", str(fd), *child_args]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start() -> tuple[subprocess.Popen[bytes], float]:
        return subprocess.Popen(command, pass_fds=(fd,)), time.monotonic()

    children = [start() for _ in range(workers)]
    out.write(f"mqadmin serving on http://{host}:{port}/ with {workers} processes "
              f"(pids {', '.join(str(p.pid) for p, _ in children)})\n")
    out.flush()
    status = 0
    quick_deaths = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, (proc, started) in enumerate(children):
                code = proc.poll()
                if code is None or stopping:
                    continue
                if time.monotonic() - started < MIN_LIFETIME_SECONDS:
                    quick_deaths += 1
                    if quick_deaths >= MAX_QUICK_DEATHS:
                        out.write(f"workers keep exiting right after starting (last: {code}); stopping\n")
                        stopping, status = True, 1
                        break
                    time.sleep(1.0)
                else:
                    quick_deaths = 0
                children[i] = start()
                out.write(f"worker {proc.pid} exited with {code}; started {children[i][0].pid}\n")
                out.flush()
    finally:
        for proc, _ in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for proc, _ in children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sock.close()
    return status
