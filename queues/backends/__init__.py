"""The SQL that differs between PostgreSQL and SQLite.

Both run the same statements where they can; the differences are row locking
(PostgreSQL's ``FOR UPDATE SKIP LOCKED`` vs SQLite's one writer at a time under
``BEGIN IMMEDIATE``), how a random lease token is made, and wake-ups
(PostgreSQL ``NOTIFY`` reaches every process; SQLite is one process).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection

NOTIFY_CHANNEL = "mq_ready"


@dataclass(frozen=True)
class Dialect:
    postgres: bool
    #: appended to a SELECT that picks rows to claim
    skip_locked: str
    #: appended to a SELECT that must keep its rows until commit
    for_update: str
    #: appended to a SELECT whose rows must not change until commit (others may read)
    for_share: str
    #: a fresh random 32-character token, computed per row in SQL
    random_token: str


POSTGRES = Dialect(
    postgres=True,
    skip_locked=" FOR UPDATE SKIP LOCKED",
    for_update=" FOR UPDATE",
    for_share=" FOR SHARE",
    random_token="replace(gen_random_uuid()::text, '-', '')",
)
# Under BEGIN IMMEDIATE a SQLite transaction is the only writer: the rows it
# reads cannot change under it, so no lock clause is needed (or accepted).
SQLITE = Dialect(
    postgres=False,
    skip_locked="",
    for_update="",
    for_share="",
    random_token="lower(hex(randomblob(16)))",
)


def dialect() -> Dialect:
    return POSTGRES if _vendor(settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"]) == "postgresql" else SQLITE


@functools.cache
def _vendor(engine: str) -> str:
    # The backend class's own attribute, not ``connection.vendor``: on the
    # event loop each task is a context of its own, where reaching
    # ``connection`` builds a new DatabaseWrapper (5 % of the server's CPU
    # per streamed round trip, when a consume stream's look built its
    # statement).
    return str(import_module(f"{engine}.base").DatabaseWrapper.vendor)


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


@contextmanager
def prepared_cursor() -> Iterator[Any]:
    """A cursor for the broker's hot statements (a send's insert, a claim, an
    ack), used like ``connection.cursor()``.

    On PostgreSQL these statements bind their parameters on the server, so
    psycopg prepares each one after a few runs on a connection (the pool
    keeps connections): planned once instead of at every call. Django binds
    on the client, which never prepares; the plan of a claim, a WITH of four
    parts, cost about 0.5 ms on the 2-core machine, as much as running it.
    These statements' texts are fixed (their rows travel as one JSON
    parameter), so a connection holds a handful of plans. The cursor is
    Django's wrapper around psycopg's server-side binding cursor: errors are
    Django's, and query logging and execute wrappers see the statements.
    ``MQ_DB_PREPARE=off`` (no ``prepare_threshold``) gives Django's cursor."""
    if connection.vendor != "postgresql" or connection.settings_dict["OPTIONS"].get("prepare_threshold") is None:
        with connection.cursor() as cur:
            yield cur
        return
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = _server_binding_cursor(connection.connection)
    cur = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    with cur:
        yield cur


def _server_binding_cursor(conn: Any) -> Any:
    # Imported here: Django's PostgreSQL backend needs psycopg, which a
    # SQLite-only setup may lack.
    from django.db.backends.postgresql.base import ServerBindingCursor

    # psycopg's Cursor takes its connection; django-stubs types the mixin alone.
    return ServerBindingCursor(conn)  # type: ignore[call-arg]
