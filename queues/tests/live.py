"""A real `mq serve` process on the test database, for tests that need HTTP
across processes (README session, crash recovery, browsers, boto3)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from mqtools.procs import ROOT, free_port, serving

__all__ = ["ROOT", "database_url_of_test_run", "free_port", "live_server", "subprocess_env"]


def database_url_of_test_run() -> str:
    """DATABASE_URL naming the database this test run uses."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url_of_test_run(), PYTHONUNBUFFERED="1", MQ_DB_POOL="on", **extra)
    return env


@contextmanager
def live_server(*, monitor: bool = True, **extra_env: str) -> Iterator[str]:
    """Start `manage.py mq serve` on a free port against the test database;
    yields its base URL."""
    port = free_port()
    env = subprocess_env(MQ_MONITOR="on" if monitor else "off", **extra_env)
    log_path = ROOT / f".live-server-{port}.log"
    try:
        with serving(env, port, log_path) as url:
            yield url
    finally:
        log_path.unlink(missing_ok=True)
