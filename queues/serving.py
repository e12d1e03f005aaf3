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


# Connections one process serves at once unless MQ_MAX_CONNECTIONS says:
# what its file descriptors allow, less a reserve for everything else it opens
# (database connections, the log), and at most DEFAULT_MAX_CONNECTIONS (each
# long poll holds a thread while it waits).
DEFAULT_MAX_CONNECTIONS = 10_000
FD_RESERVE = 256
# A refused client is told to retry after this many seconds.
REFUSED_RETRY_SECONDS = 1
# How long a refused connection may keep sending before it is closed.
REFUSED_LINGER_SECONDS = 5.0


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (a
    shell's default of 1,024 is a few hundred long polls); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(configured: int | None, fd_limit: int) -> int:
    """The connections one process serves at once: ``configured``
    (MQ_MAX_CONNECTIONS), else what ``fd_limit`` allows less FD_RESERVE, at
    most DEFAULT_MAX_CONNECTIONS."""
    if configured:
        return configured
    return max(16, min(DEFAULT_MAX_CONNECTIONS, fd_limit - FD_RESERVE))


def refusal(code: str = "unavailable", message: str = "") -> bytes:
    """The whole HTTP response a refused connection gets: the contract's 503."""
    from .api.errors import json_bytes

    message = message or (
        "This server holds as many connections as it may (MQ_MAX_CONNECTIONS); "
        f"retry in {REFUSED_RETRY_SECONDS} s, or add a process (mq serve --workers)."
    )
    body = json_bytes({"error": {"code": code, "message": message}})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: {REFUSED_RETRY_SECONDS}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def cap_connections(limit: int) -> None:
    """Serve at most ``limit`` connections at once (HTTP and websockets):
    one more is answered the contract's 503 with Retry-After, once its
    request is in, and closed; never accepted and dropped, never reset, as
    when the process runs out of file descriptors. Patches daphne's HTTP
    factory; call before daphne starts."""
    from daphne import server
    from daphne.http_protocol import HTTPFactory
    from twisted.internet import protocol

    class Refused(protocol.Protocol):
        """Reads the request, answers 503, closes its side; reads on until
        the client closes (closing with unread input would reset the
        connection) or REFUSED_LINGER_SECONDS pass."""

        def __init__(self) -> None:
            self.head = b""
            self.answered = False

        def connectionMade(self) -> None:
            from twisted.internet import reactor as installed

            reactor: Any = installed
            transport: Any = self.transport
            self.timer: Any = reactor.callLater(REFUSED_LINGER_SECONDS, transport.abortConnection)

        def dataReceived(self, data: bytes) -> None:
            if self.answered:
                return
            self.head = (self.head + data)[-8192:]
            if b"\r\n\r\n" in self.head or len(self.head) >= 8192:
                self.answered = True
                transport: Any = self.transport
                transport.write(refusal())
                transport.loseWriteConnection()

        def connectionLost(self, reason: Any = None) -> None:
            if self.timer.active():
                self.timer.cancel()

    class CappedHTTPFactory(HTTPFactory):  # type: ignore[misc]
        open_connections = 0

        def buildProtocol(self, addr: Any) -> Any:
            if CappedHTTPFactory.open_connections >= limit:
                return Refused()
            proto = super().buildProtocol(addr)
            if proto is None:
                return None
            CappedHTTPFactory.open_connections += 1
            lost = proto.connectionLost

            def connection_lost(reason: Any = None) -> None:
                CappedHTTPFactory.open_connections -= 1
                lost(reason)

            proto.connectionLost = connection_lost
            return proto

    server.HTTPFactory = CappedHTTPFactory


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
