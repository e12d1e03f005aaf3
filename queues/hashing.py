"""Which live consumer owns a FIFO group: rendezvous (highest random weight)
hashing over the live consumers of a queue.

Every consumer ``c`` scores every group ``g`` with ``weight(c, g)`` (the first
60 bits of md5("c:g")) and a group belongs to the consumer with the highest
score. When a consumer dies only the groups it won move, each to its
runner-up; when one joins it takes only the groups it now wins. No ring, no
virtual nodes, no shared state: any process that knows the live consumers
computes the same owner.

The claim filters on ownership inside its one statement (see
``owned_clause``): PostgreSQL computes the weight with ``md5``, SQLite with a
Python function registered on each connection, and both give the number
``weight`` gives here. Ownership is affinity, not the safety net: the FIFO
head test in the claim still keeps a group to one message in flight even when
two receivers briefly disagree about who is alive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from django.db import connection

from .models import Consumer

# 60 bits fit a signed 64-bit integer on both databases.
WEIGHT_HEX_DIGITS = 15
SQLITE_FUNCTION = "mq_group_weight"
# A consumer's id never holds ':' (ids are [A-Za-z0-9_-]), so "id:group" is unambiguous.
SEPARATOR = ":"


def weight(consumer_id: str, group: str) -> int:
    digest = hashlib.md5(f"{consumer_id}{SEPARATOR}{group}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:WEIGHT_HEX_DIGITS], 16)


def owner(group: str, consumer_ids: Iterable[str]) -> str | None:
    """The consumer that owns ``group`` (ties, never seen in practice, go to
    the smaller id); None when there are no consumers."""
    ids = list(consumer_ids)
    if not ids:
        return None
    return min(ids, key=lambda c: (-weight(c, group), c))


def live_consumers(queue_name: str) -> list[str]:
    """Ids of the consumers registered for ``queue_name`` that are not gone
    (dead or left).
    A suspect consumer keeps its groups: it may only be slow."""
    rows = Consumer.objects.live().values_list("id", "queues")
    return sorted(cid for cid, queues in rows if queue_name in (queues or []))


def _weight_sql(group_column: str) -> str:
    if connection.vendor == "postgresql":
        # The parameter is "<consumer id>:" (typed, so || is text concatenation).
        return (
            f"('x' || substr(md5(CAST(%s AS text) || {group_column}), 1, {WEIGHT_HEX_DIGITS}))"
            f"::bit({WEIGHT_HEX_DIGITS * 4})::bigint"
        )
    return f"{SQLITE_FUNCTION}(%s, {group_column})"


def owned_clause(queue_name: str, consumer_id: str, *, alias: str = "m") -> tuple[str, list[Any]]:
    """An SQL condition (with its parameters) true for rows of ungrouped
    messages and of groups that ``consumer_id`` owns among the queue's live
    consumers. The receiver counts as live for its own claim even if it did
    not register for this queue. Empty when it is the only consumer."""
    others = [c for c in live_consumers(queue_name) if c != consumer_id]
    if not others:
        return "", []
    column = f"{alias}.group_key"
    w = _weight_sql(column)
    terms: list[str] = []
    params: list[Any] = []
    for other in others:
        # Win outright, or tie and hold the smaller id (as ``owner``).
        op = ">=" if consumer_id < other else ">"
        terms.append(f"{w} {op} {w}")
        params += [_key(consumer_id), _key(other)]
    return f" AND ({column} = '' OR ({' AND '.join(terms)}))", params


def _key(consumer_id: str) -> str:
    # PostgreSQL concatenates in SQL; SQLite's function takes the id alone.
    return f"{consumer_id}{SEPARATOR}" if connection.vendor == "postgresql" else consumer_id


def install_sqlite_function(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: teach each SQLite connection the weight."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(SQLITE_FUNCTION, 2, weight, deterministic=True)
