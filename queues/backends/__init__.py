"""The SQL that differs between PostgreSQL and SQLite.

Both run the same statements where they can; the differences are row locking
(PostgreSQL's ``FOR UPDATE SKIP LOCKED`` vs SQLite's one writer at a time under
``BEGIN IMMEDIATE``), how a random lease token is made, and wake-ups
(PostgreSQL ``NOTIFY`` reaches every process; SQLite is one process).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

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
    return POSTGRES if connection.vendor == "postgresql" else SQLITE


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)
