"""Which commits wait for the WAL flush: sends always; claims and receipts
(ack, nack, extend, release) too, unless MQ_ASYNC_COMMIT is on, and then only
for their own transactions, never the session's setting (the pool hands the
connection on) nor a caller's transaction (it may hold a send)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from queues import broker
from queues.backends import PostgreSQL, dialect
from queues.broker import durability

from .helpers import T0, assert_counts_exact, bodies, make_queue, receive, send

# The claims and receipts must commit on their own, as they do in a server.
pytestmark = pytest.mark.django_db(transaction=True)

postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="synchronous_commit is PostgreSQL's")


def relaxed(fn: Callable[[], Any]) -> list[str]:
    """Run ``fn``; the statements it ran that turn synchronous_commit off."""
    with CaptureQueriesContext(connection) as ran:
        fn()
    return [q["sql"] for q in ran.captured_queries if "synchronous_commit" in q["sql"] and "off" in q["sql"]]


def session_setting() -> str:
    with connection.cursor() as cur:
        cur.execute("SHOW synchronous_commit")
        return str(cur.fetchone()[0])


def every_claim_and_receipt(fifo: bool) -> dict[str, Callable[[], Any]]:
    """Each operation that may commit without waiting, on a queue of its own."""
    q = make_queue("fifo" if fifo else "std", fifo=fifo, visibility_timeout=30)
    for i in range(8):
        # A group each on a FIFO queue: a held message blocks only its own.
        send(q, i, group=f"g{i}" if fifo else None)
    held: list[broker.Delivery] = []

    def take(n: int = 1) -> list[str]:
        got = receive(q, n)
        held.extend(got)
        return [d.receipt for d in got]

    return {
        "receive": lambda: take(),
        "ack": lambda: broker.ack(q, take()),
        "ack_and_receive": lambda: broker.ack_and_receive(q, take(), max_messages=1, now=T0),
        "nack": lambda: broker.nack(q, take(), now=T0),
        "extend": lambda: broker.extend(q, take(), 60, now=T0),
        "release": lambda: broker.release(q, take(), reason="test", now=T0),
        "release unanswered": lambda: broker.release_unanswered(q.id, receive(q, 1)),
    }


@postgresql_only
@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_by_default_claims_and_receipts_wait_for_the_wal_flush(fifo: bool) -> None:
    operations = every_claim_and_receipt(fifo)
    # Taken one by one: each builds on a fresh receive of its own.
    for name, operation in operations.items():
        assert relaxed(operation) == [], name
    assert session_setting() == "on"


@postgresql_only
@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
@override_settings(MQ_ASYNC_COMMIT=True)
def test_with_async_commit_every_claim_and_receipt_commits_without_waiting(fifo: bool) -> None:
    operations = every_claim_and_receipt(fifo)
    for name, operation in operations.items():
        statements = relaxed(operation)
        # The receive inside each operation is one, and the operation another
        # (the riding acks share the receive's statement, where it is one).
        assert len(statements) >= (1 if name == "receive" else 2), (name, statements)
        # Never the session's: the pooled connection's next user gets it as it was.
        assert session_setting() == "on", name
    assert_counts_exact(broker.get_queue("fifo" if fifo else "std"))


@postgresql_only
@override_settings(MQ_ASYNC_COMMIT=True)
def test_with_async_commit_a_send_still_waits_for_the_wal_flush() -> None:
    q = make_queue()
    assert relaxed(lambda: send(q, 1, 2, 3)) == []
    assert relaxed(lambda: broker.ack(q, [d.receipt for d in receive(q, 3)]))
    assert relaxed(lambda: send(q, 4)) == []


@postgresql_only
@override_settings(MQ_ASYNC_COMMIT=True)
def test_with_async_commit_a_claim_inside_a_callers_transaction_leaves_its_commit_alone() -> None:
    # The caller's commit may hold a send: it is not ours to relax.
    q = make_queue()
    send(q, 1, 2)

    def both() -> None:
        with transaction.atomic():
            send(q, 3)
            got = receive(q, 2)
            broker.ack(q, [got[0].receipt])
            broker.nack(q, [got[1].receipt], now=T0)
            assert session_setting() == "on"

    assert relaxed(both) == []


@postgresql_only
@pytest.mark.parametrize("something", [False, True], ids=["nothing to do", "something to do"])
def test_the_one_statement_forms_turn_synchronous_commit_off_for_their_transaction_alone(something: bool) -> None:
    sql = dialect()
    assert isinstance(sql, PostgreSQL)
    q = make_queue()
    send(q, 1, 2, 3, 4)
    # Receipts that match a leased message, or nothing: the setting must
    # take effect whether the statement finds rows or not.
    pairs = [(d.id, d.lease_token) for d in receive(q, 3)] if something else [(1, "0" * 32)]
    if not something:
        broker.purge(q)

    def statements(**option: bool) -> dict[str, tuple[str, list[Any]]]:
        return {
            "receive": sql.receive(q, now=T0, expires=T0 + 30, max_messages=1, consumer_id=None, acks=None, **option),
            "receive with acks": sql.receive(q, now=T0, expires=T0 + 30, max_messages=1, consumer_id=None, acks=pairs[:1], **option),
            "reclaim": sql.reclaim(q, max_messages=1, expires=T0 + 30, consumer_id=None, **option),
            "ack": sql.ack(q.id, pairs[1:2] or pairs, **option),
            "extend": sql.extend(q.id, pairs[2:] or pairs, T0 + 60, **option),
        }

    for name, statement in statements(async_commit=True).items():
        # In a transaction of the test's, to look inside it before it ends.
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute(*statement)
                found = cur.fetchall()
            assert bool(found) == something, name
            assert session_setting() == "off", name
            transaction.set_rollback(True)
        assert session_setting() == "on", name
    for name, (text, _) in statements().items():
        assert "synchronous_commit" not in text, name


@postgresql_only
def test_a_transaction_of_several_statements_turns_it_off_for_itself_alone() -> None:
    with override_settings(MQ_ASYNC_COMMIT=True):
        with durability.atomic():
            assert session_setting() == "off"
        assert session_setting() == "on"
    with durability.atomic():
        assert session_setting() == "on"


@postgresql_only
@pytest.mark.parametrize("on", [False, True], ids=["default", "async commit"])
def test_a_receive_on_the_event_loop_commits_as_the_setting_says(on: bool) -> None:
    q = make_queue()
    send(q, 1, 2, 3, 4)
    conninfo = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}

    class Recording:
        """The stream's own connection, its statements noted."""

        def __init__(self, db: psycopg.AsyncConnection[Any]) -> None:
            self.db = db
            self.statements: list[str] = []

        async def execute(self, sql: str, params: Any = None) -> Any:
            self.statements.append(sql)
            return await self.db.execute(sql, params)

    async def rounds() -> tuple[list[str], list[Any], str]:
        async with await psycopg.AsyncConnection.connect(autocommit=True, **conninfo) as db:
            recording = Recording(db)
            first = await broker.areceive_on(recording, q, [], max_messages=2, visibility_timeout=None, consumer_id=None)
            second = await broker.areceive_on(
                recording, q, [d.receipt for d in first.deliveries], max_messages=2, visibility_timeout=None, consumer_id=None
            )
            assert second.acked is not None and len(second.acked.done) == 2
            cur = await db.execute("SHOW synchronous_commit")
            row = await cur.fetchone()
            assert row is not None
            return recording.statements, first.deliveries + second.deliveries, str(row[0])

    with override_settings(MQ_ASYNC_COMMIT=on):
        statements, got, after = asyncio.run(rounds())
    assert bodies(got) == [1, 2, 3, 4]
    assert [("synchronous_commit" in s) for s in statements] == [on, on]
    assert after == "on"


@pytest.mark.skipif(connection.vendor != "sqlite", reason="about SQLite")
@override_settings(MQ_ASYNC_COMMIT=True)
def test_on_sqlite_async_commit_changes_nothing() -> None:
    # Its WAL is synced at checkpoints, not at commits, whatever the setting.
    for fifo in (False, True):
        for name, operation in every_claim_and_receipt(fifo).items():
            assert relaxed(operation) == [], name
    assert dialect().async_commit() is None


def test_the_setting_is_read_when_used() -> None:
    with override_settings(MQ_ASYNC_COMMIT=True):
        assert durability.async_commit() and durability.async_commit_here()
        with transaction.atomic():
            assert not durability.async_commit_here()
    assert not durability.async_commit()
