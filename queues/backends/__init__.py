"""The SQL that the broker runs, per database: ``postgresql.py`` and
``sqlite.py``, over what both share (``common.py``). ``dialect()`` gives the
statements of the configured database."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection

from .common import Statement, Statements, placeholders
from .postgresql import NOTIFY_CHANNEL, PostgreSQL
from .sqlite import SQLite

__all__ = ["NOTIFY_CHANNEL", "PostgreSQL", "SQLite", "Statement", "Statements", "dialect", "placeholders", "prepared_cursor"]

POSTGRESQL = PostgreSQL()
SQLITE = SQLite()


def dialect() -> Statements:
    """The statements of the default database (``.postgres`` tells which)."""
    return POSTGRESQL if _vendor(settings.DATABASES[DEFAULT_DB_ALIAS]["ENGINE"]) == "postgresql" else SQLITE


@functools.cache
def _vendor(engine: str) -> str:
    # The backend class's own attribute, not ``connection.vendor``: on the
    # event loop each task is a context of its own, where reaching
    # ``connection`` builds a new DatabaseWrapper (a noticeable share of the
    # server's CPU when a consume stream's look built its statement).
    return str(import_module(f"{engine}.base").DatabaseWrapper.vendor)


@contextmanager
def prepared_cursor() -> Iterator[Any]:
    """A cursor for the broker's hot statements (a send's insert, a claim, an
    ack), used like ``connection.cursor()``.

    On PostgreSQL these statements bind their parameters on the server, so
    psycopg prepares each one after a few runs on a connection (the pool
    keeps connections): planned once instead of at every call. Django binds
    on the client, which never prepares; the plan of a claim, a WITH of four
    parts, cost as much as running it. These statements' texts are fixed
    (their rows travel as one JSON parameter), so a connection holds a
    handful of plans. The cursor is Django's wrapper around psycopg's
    server-side binding cursor: errors are Django's, and query logging and
    execute wrappers see the statements. ``MQ_DB_PREPARE=off`` (no
    ``prepare_threshold``) gives Django's cursor."""
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
