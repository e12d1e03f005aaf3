"""The repository's nginx config (deploy/nginx.conf), run with Debian's nginx
in front of two live ``mq serve`` nodes on the test database."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mqtools.procs import stop, wait_until_up

from .live import ROOT, free_port, live_server

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
NGINX_START_SECONDS = 15



@dataclass
class Cluster:
    url: str  # nginx
    nodes: list[str]  # the nodes' own URLs
    access_log: Path
    stack: ExitStack
    node_stacks: list[ExitStack]

    def upstreams_seen(self) -> set[str]:
        return set(re.findall(r"upstream=(\S+)", self.access_log.read_text()))

    def stop_node(self, index: int) -> None:
        self.node_stacks[index].close()


def render_config(node_ports: list[int], listen_port: int, tmp: Path) -> Path:
    """deploy/nginx.conf with the test's ports, inside a minimal main config."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    for default, port in zip(("127.0.0.1:8001", "127.0.0.1:8002"), node_ports, strict=True):
        assert f"server {default} " in site, f"deploy/nginx.conf no longer lists {default}"
        site = site.replace(f"server {default} ", f"server 127.0.0.1:{port} ")
    assert "listen 80;" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    (tmp / "mqadmin.conf").write_text(site)
    # Workers of a root master run as nobody unless told otherwise, and
    # could not reach the test's private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = tmp / "nginx.conf"
    main.write_text(
        f"""{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstreams '$request_method $uri $status upstream=$upstream_addr';
    access_log {tmp}/access.log upstreams;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/mqadmin.conf;
}}
"""
    )
    return main


@pytest.fixture
def cluster(transactional_db: None, tmp_path: Path) -> Iterator[Cluster]:
    if NGINX is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but nginx is not installed: the two-node proxy test cannot run")
        pytest.skip("nginx is not installed (apt-get install nginx-light): the two-node proxy test is SKIPPED")
    from django.conf import settings

    with ExitStack() as stack:
        node_stacks = []
        nodes = []
        for _ in range(2):
            node = ExitStack()
            nodes.append(node.enter_context(live_server(SECRET_KEY=settings.SECRET_KEY, TRUST_PROXY_HEADERS="on")))
            stack.callback(node.close)
            node_stacks.append(node)
        port = free_port()
        config = render_config([int(n.rsplit(":", 1)[1]) for n in nodes], port, tmp_path)
        check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", str(config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        stack.callback(stop, proc)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, proc, what="nginx", timeout=NGINX_START_SECONDS, log=tmp_path / "error.log")
        yield Cluster(url, nodes, tmp_path / "access.log", stack, node_stacks)


def _api(base: str) -> httpx.Client:
    from queues.models import Token

    _token, raw = Token.issue(f"nginx-{secrets.token_hex(4)}", ["admin"])
    return httpx.Client(base_url=f"{base}/api/v1/", headers={"Authorization": f"Bearer {raw}"}, timeout=30)


def test_api_sqs_long_poll_and_websocket_work_through_nginx_on_both_nodes(cluster: Cluster) -> None:
    api = _api(cluster.url)
    assert api.put("queues/orders", json={}).status_code == 201
    for i in range(6):
        assert api.post("queues/orders/messages", json={"body": {"n": i}}).status_code == 201
    got = api.post("queues/orders/receive", json={"max": 10}).json()["messages"]
    assert sorted(m["body"]["n"] for m in got) == list(range(6))
    assert api.post("queues/orders/ack", json={"receipts": [m["receipt"] for m in got]}).json()["stale"] == []
    # Round robin: both nodes answered.
    assert len(cluster.upstreams_seen()) == 2

    # A long poll held by one node is answered when a send lands on the other
    # (PostgreSQL NOTIFY; on SQLite the waiter's own re-check).
    result: list[httpx.Response] = []
    poller = threading.Thread(target=lambda: result.append(api.post("queues/orders/receive", json={"wait": 15})))
    poller.start()
    time.sleep(0.5)
    other = _api(cluster.url)
    other.post("queues/orders/messages", json={"body": "late"})
    poller.join(20)
    assert result and result[0].status_code == 200
    assert [m["body"] for m in result[0].json()["messages"]] == ["late"]

    # SQS clients sign the Host header with its port: nginx must pass it as sent.
    import boto3

    from queues.models import Token

    _t, raw = Token.issue(f"nginx-sqs-{secrets.token_hex(4)}", ["admin"])
    key_id, _, secret = raw.partition(".")
    sqs = boto3.client(
        "sqs",
        endpoint_url=f"{cluster.url}/sqs/",
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    url = sqs.create_queue(QueueName="via-proxy")["QueueUrl"]
    assert url == f"{cluster.url}/sqs/via-proxy"
    sqs.send_message(QueueUrl=url, MessageBody="proxied")
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url)["Messages"]] == ["proxied"]

    # Static files come through (served by the nodes).
    static = httpx.get(f"{cluster.url}/static/dashboard/dashboard.css", timeout=10)
    assert static.status_code == 200 and static.headers["content-type"].startswith("text/css")

    # The dashboard's websocket upgrade passes through.
    assert _websocket_status(cluster.url, _staff_session()) == 101
    assert _websocket_status(cluster.url, None) != 101


def test_stopping_one_node_loses_no_requests(cluster: Cluster) -> None:
    api = _api(cluster.url)
    assert api.put("queues/jobs", json={}).status_code == 201
    api.post("queues/jobs/messages", json={"body": "before"})
    cluster.stop_node(1)
    statuses = [api.post("queues/jobs/messages", json={"body": i}).status_code for i in range(6)]
    assert statuses == [201] * 6
    got = api.post("queues/jobs/receive", json={"max": 10}).json()["messages"]
    assert sorted(map(str, (m["body"] for m in got))) == sorted(["before", *map(str, range(6))])


def _staff_session() -> str:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user(f"op-{secrets.token_hex(3)}", password=secrets.token_hex(8), is_staff=True)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _websocket_status(base: str, session: str | None) -> int:
    """Status of a websocket handshake for /ws/dashboard/ through the proxy."""
    host = base.removeprefix("http://")
    address, port = host.rsplit(":", 1)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws/dashboard/ HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: {base}",
    ]
    if session:
        lines.append(f"Cookie: sessionid={session}")
    with socket.create_connection((address, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_check_deploy_is_clean_with_production_settings() -> None:
    env = {
        **os.environ,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "off",
        "HTTPS": "on",
        "ALLOWED_HOSTS": "mq.example.com",
        "DATABASE_URL": "postgres://mq@db.internal:5432/mq",
        "CHANNEL_LAYER_URL": "redis://redis.internal:6379/0",
    }
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout
