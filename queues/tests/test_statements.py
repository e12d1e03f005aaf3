"""What the hot operations cost the database: a handful of statements a
batch, one each on PostgreSQL, prepared once per connection, with plans that
stay on the claim index."""

from __future__ import annotations

import importlib
import re

import orjson
import pytest
from django.db import DatabaseError, connection

from queues import broker
from queues.backends import dialect
from queues.models import Message

from .helpers import T0, assert_counts_exact, bodies, make_queue, receive, send


def test_a_batch_costs_a_handful_of_statements_not_one_per_message(db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    q = make_queue()
    with CaptureQueriesContext(connection) as sent:
        send(q, *range(1000))
    with CaptureQueriesContext(connection) as received:
        got = receive(q, 100)
    with CaptureQueriesContext(connection) as acked:
        broker.ack(q, [d.receipt for d in got])
    assert len(got) == 100
    # Counted statements include savepoints/transaction control: a handful.
    assert len(sent) <= 12, [x["sql"][:80] for x in sent.captured_queries]
    assert len(received) <= 8, [x["sql"][:80] for x in received.captured_queries]
    assert len(acked) <= 8, [x["sql"][:80] for x in acked.captured_queries]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement forms are PostgreSQL's")
def test_on_postgresql_send_receive_and_ack_are_one_statement_each(db):
    from django.test.utils import CaptureQueriesContext

    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq)
    with CaptureQueriesContext(connection) as sent:
        send(q, *range(100))
    with CaptureQueriesContext(connection) as received:
        got = receive(q, 100)
    with CaptureQueriesContext(connection) as acked:
        result = broker.ack(q, [d.receipt for d in got])
    assert len(result.done) == 100
    assert [len(sent), len(received), len(acked)] == [1, 1, 1]
    assert_counts_exact(q, dlq)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement forms are PostgreSQL's")
def test_on_postgresql_acks_riding_on_a_receive_are_in_its_statement(db):
    from django.test.utils import CaptureQueriesContext

    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq)
    send(q, *range(200))
    first = receive(q, 100)
    with CaptureQueriesContext(connection) as both:
        second, acked = broker.ack_and_receive(q, [d.receipt for d in first], max_messages=100, now=T0)
    assert len(both) == 1, [x["sql"][:80] for x in both.captured_queries]
    assert acked.done == [str(d.id) for d in first] and acked.stale == []
    assert bodies(second) == list(range(100, 200))
    assert not Message.objects.filter(id__in=[d.id for d in first]).exists()
    assert broker.queue_counts([q.id])[q.id].totals["acked_total"] == 100
    assert_counts_exact(q, dlq)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_on_postgresql_the_hot_statements_are_prepared_on_a_kept_connection(db):
    # Planned once per connection, not at every call: after a few runs the
    # send's insert, the claim and the ack are prepared statements.
    q = make_queue()
    for i in range(6):
        send(q, i, i + 100)
        got = receive(q, 2)
        assert len(broker.ack(q, [d.receipt for d in got]).done) == 2
    with connection.cursor() as cur:
        cur.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cur.fetchall()]
    assert any(s.startswith("WITH ins AS (INSERT INTO queues_message") for s in prepared), prepared
    assert any("mq_ready_head(" in s for s in prepared), prepared
    assert any(s.startswith("WITH main AS (SELECT * FROM mq_ack(") for s in prepared), prepared
    assert_counts_exact(q)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")
def test_on_postgresql_the_hot_statements_keep_one_plan_beside_a_big_queue(db):
    # One queue holds nearly every row. PostgreSQL had found the generic
    # plan of the claim + ack dearer than one made for the small queue's id
    # and planned it at every call (0.5 ms each): the ack probed the queue's
    # index, cheap for a small queue, costed for an average one.
    big, small = make_queue("big"), make_queue("small")
    for start in range(0, 30_000, 1_000):
        send(big, *range(start, start + 1_000))
    with connection.cursor() as cur:
        cur.execute("ANALYZE queues_message")
    send(small, *range(30))
    held: list[broker.Delivery] = []
    for i in range(22):
        held, acked = broker.ack_and_receive(small, [d.receipt for d in held], max_messages=1, now=T0)
        assert len(held) == 1 and len(acked.done) == min(i, 1)
    with connection.cursor() as cur:
        cur.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH acked AS%%mq_ready_head(%%'")
        ((generic, custom),) = cur.fetchall()
        # Prepared after a few runs; PostgreSQL tries five plans of its own,
        # then keeps the generic one.
        assert custom == 5 and generic >= 10, (generic, custom)
        # The function's query keeps one plan too, and never compiles it:
        # costed for the big queue, compiling took 5-6 ms a claim.
        cur.execute("SELECT proconfig FROM pg_proc WHERE proname = 'mq_ready_head'")
        config = cur.fetchone()[0]
        assert "plan_cache_mode=force_generic_plan" in config and "jit=off" in config
    assert_counts_exact(big, small)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the claim function is PostgreSQL's")
def test_on_postgresql_the_claim_walks_the_claim_index_even_on_stale_statistics(db):
    # Statistics taken while the queue was empty: planned as a plain
    # subquery, the claim would sort all 3,000 ready rows for each receive.
    q = make_queue()
    with connection.cursor() as cur:
        cur.execute("ANALYZE queues_message")
    send(q, *range(3000))
    claim, _ = dialect().claim(q, max_messages=10, expires=T0 + 30, consumer_id=None, slots=None)
    assert "mq_ready_head(" in claim
    with connection.cursor() as cur:
        cur.execute("SELECT proconfig FROM pg_proc WHERE proname = 'mq_ready_head'")
        (config,) = cur.fetchone()
        assert "enable_sort=off" in config
        # The function's own query, under the function's setting.
        cur.execute("SET LOCAL enable_sort = off")
        cur.execute(
            "EXPLAIN SELECT m.id FROM queues_message m WHERE m.queue_id = %s AND m.state = 'ready' "
            "ORDER BY m.priority DESC, m.id LIMIT 10 FOR UPDATE SKIP LOCKED",
            [q.id],
        )
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert "mq_msg_claim" in plan and "Sort" not in plan, plan
    got = receive(q, 10)
    assert [d.id for d in got] == sorted(d.id for d in got) and len(got) == 10


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement forms are PostgreSQL's")
def test_on_postgresql_a_fifo_receive_is_one_statement_beside_its_consumers_lookup(db):
    from django.test.utils import CaptureQueriesContext

    q = make_queue("f", fifo=True)
    me = broker.register_consumer("me", ["f"], {}, 60).pk
    broker.register_consumer("other", ["f"], {}, 60)
    send(q, "ungrouped")
    for i in range(3):
        for g in range(40):
            send(q, f"g{g}-{i}", group=f"g{g}")
    with CaptureQueriesContext(connection) as received:
        got = receive(q, 10, consumer_id=me)
    assert len(got) == 10
    sql = [x["sql"] for x in received.captured_queries]
    assert len(sql) == 2 and "queues_consumer" in sql[0] and sql[1].startswith("WITH"), sql
    assert_counts_exact(q)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="plans are PostgreSQL's")
@pytest.mark.parametrize("slots", [None, list(range(-1, 20)), list(range(-1, 2000))], ids=["all", "few", "many"])
def test_on_postgresql_the_fifo_head_test_probes_the_group_not_the_table(db, slots):
    # Were the planner unable to use mq_msg_group (partial: grouped rows
    # only), each candidate row would read the whole message table.
    q = make_queue("f", fifo=True)
    for g in range(20):
        send(q, "x", "y", group=f"g{g}")
    claim, params = dialect().claim(q, max_messages=10, expires=T0 + 30, consumer_id=None, slots=slots)
    with connection.cursor() as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute(f"EXPLAIN {claim}", params)
        plan = "\n".join(r[0] for r in cur.fetchall())
    assert "Seq Scan on queues_message" not in plan and "mq_msg_group" in plan, plan
    if slots is not None and len(slots) < 100:
        assert "mq_msg_slot" in plan, plan


def _message_index_entries(act) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """B-tree entries ``act()`` wrote into the message table's indexes, by
    index, read back from the WAL; skips where pg_walinspect is missing."""
    with connection.cursor() as cur:
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except DatabaseError:  # contrib not installed: nothing to read the WAL with
            pytest.skip("pg_walinspect is not available")
        cur.execute("SELECT pg_current_wal_insert_lsn()")
        (start,) = cur.fetchone()
    act()
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, count(*) FROM pg_get_wal_records_info(%s, pg_current_wal_flush_lsn()) r "
            "CROSS JOIN LATERAL (SELECT regexp_match(r.block_ref, 'rel \\d+/(\\d+)/(\\d+)') AS m) b "
            "JOIN pg_class c ON c.relfilenode = b.m[2]::oid "
            "WHERE b.m[1]::oid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND r.resource_manager = 'Btree' AND r.record_type LIKE 'INSERT%%' "
            "AND c.relname ~ '^(mq_msg|queues_message)' GROUP BY 1",
            [start],
        )
        entries = dict(cur.fetchall())
        cur.execute("DROP EXTENSION pg_walinspect")
    return entries


@pytest.mark.skipif(connection.vendor != "postgresql", reason="index entries per row version are PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_claim_writes_only_the_index_entries_it_needs():
    # A claim's new row versions belong in the primary key, mq_msg_queue and
    # mq_msg_lease; every other index leaves in-flight rows out, so the
    # claim writes nothing there.
    q = make_queue()
    send(q, *range(50))
    entries = _message_index_entries(lambda: receive(q, 50))
    assert set(entries) == {"queues_message_pkey", "mq_msg_queue", "mq_msg_lease"}, entries
    assert all(n >= 50 for n in entries.values()), entries


@pytest.mark.skipif(connection.vendor != "postgresql", reason="index entries per row version are PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_on_postgresql_a_send_writes_only_the_index_entries_it_needs():
    # A plain ready message: the primary key, the claim's index and the
    # queue's ids. Not mq_msg_state (ready rows are found through the
    # claim's index) nor an index on the enqueue time.
    q = make_queue()
    entries = _message_index_entries(lambda: send(q, *range(50)))
    assert set(entries) == {"queues_message_pkey", "mq_msg_claim", "mq_msg_queue"}, entries
    # A delayed one: browsed by state, and found by when it comes due.
    entries = _message_index_entries(lambda: send(q, *range(50), delay=60))
    assert set(entries) == {"queues_message_pkey", "mq_msg_state", "mq_msg_due", "mq_msg_queue"}, entries


def _plan_rows(sql: str, params: list) -> tuple[str, int]:  # type: ignore[type-arg]
    """The plan ``sql`` ran with, and the most rows one of its nodes
    produced in all its loops."""
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {sql}", params)
        plan = "\n".join(r[0] for r in cur.fetchall())
    most = max(int(rows) * int(loops) for rows, loops in re.findall(r"actual rows=(\d+) loops=(\d+)", plan))
    return plan, most


@pytest.mark.skipif(connection.vendor != "postgresql", reason="mq_msg_state leaves ready rows out on PostgreSQL only")
def test_on_postgresql_ready_rows_are_found_through_the_claim_index_among_many_in_flight(db):
    # mq_msg_state holds no ready rows: the oldest ready message and a page
    # of them by id come from mq_msg_claim, a few entries per priority. A
    # walk of the queue's ids (mq_msg_queue) would read the 20,000 older
    # messages in flight first; the planner, counting on ready rows spread
    # evenly, would take it.
    from django.test.utils import CaptureQueriesContext

    q = make_queue()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO queues_message (queue_id, state, priority, body, headers, group_key, delivery_count, "
            "enqueued_at, visible_at, last_error, lease_token, lease_expires_at) "
            "SELECT %s, 'in_flight', i %% 10, '1', '{}', '', 1, %s, %s, '', 'x', %s FROM generate_series(1, 20000) i",
            [q.id, T0, T0, T0 + 3600],
        )
    ready = [m for p in range(10) for m in send(q, *range(30), priority=p, now=T0 + 1)]
    with connection.cursor() as cur:
        cur.execute("ANALYZE queues_message")
    statements = {
        "oldest": dialect().oldest_ready([q.id]),
        "oldest page": dialect().ready_ids(q.id, after=None, newest=False, limit=100),
        "newest page": dialect().ready_ids(q.id, after=None, newest=True, limit=100),
        "next page": dialect().ready_ids(q.id, after=int(ready[150]), newest=False, limit=100),
    }
    for name, (sql, params) in statements.items():
        plan, most = _plan_rows(sql, params)
        assert "mq_msg_claim" in plan and "mq_msg_queue" not in plan and "Seq Scan" not in plan, (name, plan)
        assert most <= 1000, (name, plan)  # a page of each priority at most
    with CaptureQueriesContext(connection) as browsed:
        page = broker.browse(q, state="ready", limit=100)
    assert [str(m.pk) for m in page] == sorted(ready, key=int)[:100]
    plan, most = _plan_rows(browsed.captured_queries[-1]["sql"].replace("%", "%%"), [])
    assert "mq_msg_queue" not in plan and "Seq Scan on queues_message" not in plan and most <= 1000, plan
    assert broker.queue_counts([q.id], now=T0 + 11)[q.id].oldest_ready_age == 10


@pytest.mark.skipif(connection.vendor != "postgresql", reason="foreign-key triggers are PostgreSQL's")
def test_on_postgresql_no_foreign_key_is_checked_per_message_written(db):
    # A foreign key is checked by a trigger per row written: on a send of
    # 100, 100 queries of the queue at commit, and events for the NULL ones.
    # Each statement that writes a queue id checks it once instead
    # (``Statements.queue_held``), and a claim holds its consumer alive.
    with connection.cursor() as cur:
        cur.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'queues_message'::regclass")
        assert cur.fetchall() == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the ack function is PostgreSQL's")
def test_on_postgresql_the_ack_probes_the_primary_key_in_id_order_whatever_the_table_size(db):
    # The ack's delete locks no row first: its plan's order is the order
    # it takes the rows in (by id, against deadlocks), and a walk of the
    # table would cost an ack milliseconds. Planned as a plain statement, it
    # walked a small table (fresh statistics) or one that filled up since
    # they were taken, and a generic plan kept that walk.
    create = importlib.import_module("queues.migrations.0014_ack_function").CREATE
    query = create.split("RETURN QUERY WITH acked AS (")[1].split("SELECT * FROM acked")[0].strip().removesuffix(")")
    query = query.replace("jsonb_array_elements(receipts)", "jsonb_array_elements($1)").replace("= queue AND", "= $2 AND")
    q = make_queue()
    send(q, *range(20))
    plans = []
    with connection.cursor() as cur:
        cur.execute("ANALYZE queues_message")
        cur.execute("SELECT unnest(proconfig) FROM pg_proc WHERE proname = 'mq_ack'")
        for (setting,) in cur.fetchall():  # the function's own settings
            name, value = setting.split("=")
            cur.execute(f"SET LOCAL {name} = {value}")
        cur.execute(f"PREPARE ack_plan(jsonb, bigint) AS {query}")
        for n in (20, 3000):
            if n > 20:
                send(q, *range(n - 20))  # statistics stale from here
            got = receive(q, 20)
            pairs = sorted((d.id, d.receipt.split(".")[1]) for d in got)
            cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE ack_plan(%s::jsonb, %s)", [orjson.dumps(pairs).decode(), q.id])
            plans.append("\n".join(r[0] for r in cur.fetchall()))
        cur.execute("DEALLOCATE ack_plan")
    for plan in plans:
        lines = [line.strip() for line in plan.splitlines()]
        assert lines[1].startswith("->  Nested Loop"), plan
        assert lines[2].startswith("->  Function Scan on jsonb_array_elements"), plan  # the receipts drive it
        assert any(line.startswith("->  Index Scan using queues_message_pkey") for line in lines[3:]), plan
        assert "Seq Scan" not in plan and "Hash" not in plan and "Bitmap" not in plan, plan
        assert "rows=20 loops=1" in lines[0], plan
