"""Durability: which commits wait for the WAL to reach the disk.

A send always does: its 201 (or its stream's answer) means the message
survives a crash of the database. Claims and receipts (ack, nack, extend,
release) do too, unless ``MQ_ASYNC_COMMIT`` is on; then, on PostgreSQL,
their own transactions commit with ``synchronous_commit = off``, for that
transaction alone (never the session: the pool hands the connection on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction

from ..backends import dialect


def async_commit() -> bool:
    """Whether claims and receipts may commit without waiting for the WAL
    flush (``MQ_ASYNC_COMMIT``)."""
    # Why this cannot lose a message: a commit that does not wait can be lost
    # in a crash of PostgreSQL (not of mqadmin: the WAL is already written),
    # and then the database comes back as it was before that transaction, as
    # if it never ran, never half of it. A lost claim leaves its messages
    # ready (or as the previous lease left them): they are delivered again,
    # and the receipt the client was given is stale. A lost ack, nack, extend
    # or release leaves its message leased: it comes back when that lease
    # ends. Either way a message can only come back, which at-least-once
    # delivery allows; none goes missing, because no send is ever committed
    # so, and a later durable commit flushes every earlier one with it (the
    # WAL is one sequence).
    return bool(settings.MQ_ASYNC_COMMIT)


def async_commit_here() -> bool:
    """``async_commit()`` for a statement about to run on Django's
    connection: only when it is a transaction of its own. Inside a caller's
    transaction the commit is the caller's, and may hold a send."""
    return async_commit() and not connection.in_atomic_block


@contextmanager
def atomic() -> Iterator[None]:
    """``transaction.atomic()`` for a claim or a receipt of several
    statements: with ``async_commit_here()`` its commit does not wait for
    the WAL flush."""
    relaxed = async_commit_here()
    with transaction.atomic():
        statement = dialect().async_commit() if relaxed else None
        if statement is not None:
            with connection.cursor() as cur:
                cur.execute(*statement)
        yield
