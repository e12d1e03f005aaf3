"""mqadmin under test: a ``mq serve`` of its own on the benchmark's
database, and mqadmin's own Python client as an application uses it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mqclient import Client

from mqtools import procs

from .measure import database_url


@contextmanager
def mq_server(log_path: Path, settings: Mapping[str, str] | None = None) -> Iterator[str]:
    """``manage.py mq serve`` on a free port, on this database, with these
    ``settings`` (environment variables) over the caller's; yields its URL."""
    env = dict(os.environ, DATABASE_URL=database_url(), PYTHONUNBUFFERED="1", DEBUG="off", **(settings or {}))
    # Enough for four consumers and a producer on two cores; a shared
    # PostgreSQL (max_connections 100) has other clients too.
    env.setdefault("MQ_DB_POOL_MAX", "10")
    # The benchmark vacuums between rounds itself (Runner.vacuum): the
    # monitor's stand-in for autovacuum would start one in the middle of one.
    env.setdefault("MQ_VACUUM", "off")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with procs.serving(env, log_path=log_path) as url:
        yield url


class Api:
    """mqadmin's own Python client (clients/python: the standard library's
    http.client, one kept-alive connection per thread), as an application
    or `mq worker` uses it."""

    def __init__(self, url: str, token: str) -> None:
        self.client = Client(url, token, timeout=60)

    def close(self) -> None:
        self.client.close()

    def send(self, queue: str, bodies: list[Any]) -> None:
        if len(bodies) == 1:
            self.client.send(queue, bodies[0])
        else:
            self.client.send_batch(queue, [{"body": b} for b in bodies])

    def receive(self, queue: str, n: int, wait: int = 0) -> list[dict[str, Any]]:
        return [{"body": m.body, "receipt": m.receipt} for m in self.client.receive(queue, max=n, wait=wait)]

    def ack(self, queue: str, receipts: list[str]) -> None:
        self.client.ack(queue, receipts)

    def ack_and_receive(self, queue: str, receipts: list[str], n: int) -> tuple[int, list[str]]:
        """Ack ``receipts`` and lease up to ``n`` in one call: (how many
        were acked, the new receipts)."""
        acked, messages = self.client.ack_and_receive(queue, receipts, max=n)
        return len(acked["acked"]), [m.receipt for m in messages]
