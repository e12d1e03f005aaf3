"""`mq serve`: its listening socket and connection limit; `--workers N`: one port, N processes, one broker; a dead worker
is replaced; a stop stops them all; configurations that cannot share refuse
with one clear sentence."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import httpx
import psutil
import pytest
from django.conf import settings

from conftest import make_token
from dashboard.tests.test_two_servers import needs_postgres_and_redis
from mqtools.procs import PY, ROOT, free_port, stop, wait_until_up
from queues import serving

from .live import subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


def test_workers_refuse_a_setup_that_cannot_share() -> None:
    pg, redis = "django.db.backends.postgresql", "redis://127.0.0.1:6379/0"
    assert "needs PostgreSQL" in serving.sharing_problem("django.db.backends.sqlite3", redis, "127.0.0.1")
    assert "needs Redis" in serving.sharing_problem(pg, "", "127.0.0.1")
    assert "IPv4" in serving.sharing_problem(pg, redis, "::1")
    assert serving.sharing_problem(pg, redis, "0.0.0.0") is None


def test_workers_on_sqlite_exit_with_the_reason() -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
        pytest.skip("the SQLite refusal is checked on the SQLite run")
    run = subprocess.run(
        [PY, "manage.py", "mq", "serve", "--port", str(free_port()), "--workers", "2"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert run.returncode != 0
    assert "--workers above 1 needs PostgreSQL" in run.stderr


def children_of(proc: subprocess.Popen) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_two_workers_serve_one_port_replace_a_dead_one_and_stop_together() -> None:
    redis_url = needs_postgres_and_redis()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = make_token()
    proc = subprocess.Popen(
        [PY, "manage.py", "mq", "serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT, env=subprocess_env(CHANNEL_LAYER_URL=redis_url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(url, proc)
        workers = children_of(proc)
        assert len(workers) == 2
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{url}/api/v1", headers=auth, timeout=10) as api:
            assert api.put("/queues/w", json={}).status_code == 201
            # Fresh connections: the kernel spreads them over both workers.
            for i in range(20):
                r = httpx.post(f"{url}/api/v1/queues/w/messages", json={"body": i}, headers=auth, timeout=10)
                assert r.status_code == 201

            workers[0].kill()  # SIGKILL: the parent starts another
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                now = children_of(proc)
                if len(now) == 2 and workers[0].pid not in {c.pid for c in now}:
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the killed worker was not replaced")
            wait_until_up(url, proc)
            got = api.post("/queues/w/receive", json={"max": 100}).json()["messages"]
            assert sorted(m["body"] for m in got) == list(range(20))

        survivors = children_of(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        _gone, alive = psutil.wait_procs(survivors, timeout=5)
        assert not alive
    finally:
        stop(proc)


def test_our_log_lines_are_printed_once_after_daphne_sets_up_logging() -> None:
    # daphne's command line gives the root logger a handler of its own.
    script = (
        "import logging, django; django.setup(); "
        "logging.basicConfig(level=logging.INFO, format='%(asctime)-15s %(levelname)-8s %(message)s'); "
        "logging.getLogger('queues.monitor').info('monitor stopped'); "
        "logging.getLogger('mqadmin.x').warning('careful')"
    )
    run = subprocess.run([PY, "-c", script], cwd=ROOT, env=subprocess_env(DJANGO_SETTINGS_MODULE="mqadmin.settings"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("monitor stopped") == 1, run.stderr
    assert run.stderr.count("careful") == 1, run.stderr


def test_the_log_level_is_taken_in_any_case_and_a_wrong_one_is_named() -> None:
    script = "import logging, django; django.setup(); print(logging.getLogger('queues.monitor').getEffectiveLevel())"

    def run(level: str) -> subprocess.CompletedProcess[str]:
        env = subprocess_env(DJANGO_SETTINGS_MODULE="mqadmin.settings", MQ_LOG_LEVEL=level)
        return subprocess.run([PY, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert run("warning").stdout.strip() == "30"
    assert run(" Debug ").stdout.strip() == "10"
    wrong = run("loud")
    assert wrong.returncode != 0
    assert "MQ_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case), not 'loud'" in wrong.stderr


def test_one_process_listens_with_a_backlog_that_takes_a_fleet_connecting_at_once() -> None:
    # Twisted's own listen() queues 50 connections: a few hundred consumers
    # starting their long polls together had connections reset.
    import shutil

    from .live import live_server

    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read the listening socket's backlog")
    with live_server(monitor=False) as url:
        port = url.rsplit(":", 1)[1].strip("/")
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
        # For a listening socket, ss shows the backlog as Send-Q.
        backlogs = {int(line.split()[2]) for line in out.splitlines() if line.strip()}
        assert backlogs and min(backlogs) >= serving.LISTEN_BACKLOG
        # ...and the server answers on it.
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_port_in_use_is_named() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run(
            [PY, "manage.py", "mq", "serve", "--port", str(port), "--no-monitor"],
            cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
        )
    assert run.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr


def _request(sock: socket.socket, path: str = "/healthz") -> bytes:
    """Send a GET and read the whole answer, until the server closes or
    a complete response is in; a reset raises ConnectionResetError."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_past_its_connection_limit_a_server_answers_503_with_retry_after_and_resets_nothing() -> None:
    from .live import live_server

    with live_server(monitor=False, MQ_MAX_CONNECTIONS="3") as url:
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))
        held = [socket.create_connection((host, port), timeout=10) for _ in range(3)]
        time.sleep(0.3)  # accepted by now
        try:
            for _ in range(3):
                with socket.create_connection((host, port), timeout=10) as extra:
                    answer = _request(extra)  # a reset would raise here
                head, _, body = answer.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                assert lines[0] == "HTTP/1.1 503 Service Unavailable", lines
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                assert headers["retry-after"] == "1"
                assert headers["content-type"] == "application/json"
                error = json.loads(body)["error"]
                assert error["code"] == "unavailable" and "MQ_MAX_CONNECTIONS" in error["message"]
        finally:
            held.pop().close()
        # One let go: the next connection is served.
        time.sleep(0.3)
        with socket.create_connection((host, port), timeout=10) as again:
            assert _request(again).startswith(b"HTTP/1.1 200 ")
        for sock in held:
            sock.close()


def test_the_connection_limit_follows_the_open_file_limit_unless_set() -> None:
    assert serving.connection_limit(50, 20_000) == 50
    assert serving.connection_limit(0, 1024) == 1024 - serving.FD_RESERVE
    assert serving.connection_limit(0, 1 << 20) == serving.DEFAULT_MAX_CONNECTIONS
    assert serving.connection_limit(0, 100) == 16


def test_a_503_says_when_to_retry() -> None:
    from queues.api.errors import error_response

    response = error_response("unavailable", "the database is unreachable", 503)
    assert response["Retry-After"] == "1"
    assert json.loads(response.content)["error"]["code"] == "unavailable"
