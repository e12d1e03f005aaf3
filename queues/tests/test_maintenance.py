"""Maintenance: due delayed messages promoted, expired leases redelivered
or dead-lettered, dedup keys pruned, churning tables vacuumed, and the
background job that runs it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from queues import broker, monitor
from queues.models import DedupKey, Message
from queues.states import MessageState as S

from .helpers import T0, assert_counts_exact, live_counts, make_queue, receive, send

# ---------------------------------------------- promotion, expiry, pruning --


def test_monitor_tick_promotes_due_delayed_messages(db):
    q = make_queue()
    send(q, "x", delay=5, now=T0)
    monitor.tick(now=T0 + 4)
    assert live_counts(q)["delayed"] == 1
    monitor.tick(now=T0 + 5)
    assert live_counts(q) == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}
    assert_counts_exact(q)


def test_expired_lease_is_redelivered_with_delivery_count_plus_one(db):
    q = make_queue(visibility_timeout=10)
    send(q, "x")
    (first,) = receive(q, now=T0)
    monitor.tick(now=T0 + 9)
    assert receive(q, now=T0 + 9) == []
    assert monitor.tick(now=T0 + 10)["expired"] == 1
    (again,) = receive(q, now=T0 + 10)
    assert again.id == first.id and again.delivery_count == 2
    assert again.receipt != first.receipt
    assert_counts_exact(q)
    totals = broker.queue_counts([q.id])[q.id].totals
    assert totals["redelivered_total"] == 1 and totals["received_total"] == 2


def test_expiry_past_max_deliveries_without_dlq_marks_dead_in_place(db):
    q = make_queue(max_deliveries=2, visibility_timeout=5)
    send(q, "poison")
    receive(q, now=T0)
    monitor.tick(now=T0 + 5)
    (d,) = receive(q, now=T0 + 5)
    assert d.delivery_count == 2
    monitor.tick(now=T0 + 10)
    m = Message.objects.get(pk=d.id)
    assert m.state == S.DEAD and m.queue_id == q.id
    assert receive(q, now=T0 + 20) == []
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    assert_counts_exact(q)


def test_expiry_past_max_deliveries_moves_to_dead_letter_queue(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, visibility_timeout=5, dead_letter_queue=dlq)
    send(q, "x")
    receive(q, now=T0)
    monitor.tick(now=T0 + 6)
    assert Message.objects.get().queue_id == dlq.id
    assert_counts_exact(q, dlq)


def test_prune_dedup_forgets_expired_keys_only(db):
    q = make_queue()
    send(q, "a", dedup_id="old", now=T0)
    send(q, "b", dedup_id="new", now=T0 + 200)
    broker.prune_dedup(now=T0 + 301)
    assert list(DedupKey.objects.values_list("dedup_id", flat=True)) == ["new"]


# ------------------------------------------------------------------ vacuum --


def test_churning_tables_are_vacuumed_early_on_postgresql(db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no autovacuum to tune")
    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN "
            "('queues_message', 'queues_queuestatsdelta', 'queues_dedupkey')"
        )
        options = {name: set(opts or []) for name, opts in cur.fetchall()}
    assert "autovacuum_vacuum_scale_factor=0" in options["queues_message"]
    assert "autovacuum_vacuum_threshold=5000" in options["queues_message"]
    assert "autovacuum_vacuum_threshold=2000" in options["queues_queuestatsdelta"]
    assert "autovacuum_vacuum_threshold=5000" in options["queues_dedupkey"]


def test_autovacuum_off_is_reported_by_the_database_check(db):
    from django.db import connection

    from queues.checks import check_autovacuum

    if connection.vendor != "postgresql":
        assert check_autovacuum(databases=["default"]) == []
        return
    with connection.cursor() as cur:
        cur.execute("SELECT current_setting('autovacuum')")
        (setting,) = cur.fetchone()
    warnings = check_autovacuum(databases=["default"])
    assert [w.id for w in warnings] == ([] if setting == "on" else ["mq.W005"])


def _dead_rows(table: str) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = %s", [table])
        return int(cur.fetchone()[0])


@pytest.mark.skipif(connection.vendor != "postgresql", reason="VACUUM is PostgreSQL's")
def test_with_autovacuum_off_the_monitor_vacuums_what_autovacuum_would_have(transactional_db, settings, monkeypatch):
    from .workers import wait_for

    monkeypatch.setattr(broker.vacuum_unvacuumed, "rests_until", {})

    table = Message._meta.db_table
    q = make_queue()
    # Past the table's own threshold (5,000 dead rows, migration 0005).
    for _ in range(6):
        send(q, *range(1000))
    broker.purge(q)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")  # the deletes' counts, to the stats views now
        cur.execute("SELECT current_setting('autovacuum')")
        autovacuum_on = cur.fetchone()[0] == "on"
    wait_for(lambda: _dead_rows(table) >= 6000 or (autovacuum_on and _dead_rows(table) == 0), timeout=10, interval=0.1)
    if autovacuum_on:
        assert table not in broker.vacuum_unvacuumed()  # autovacuum's job, not ours
    with connection.cursor() as cur:
        cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        if _dead_rows(table) == 0:  # autovacuum got there first: make more
            send(q, *range(6000))
            broker.purge(q)
            with connection.cursor() as cur:
                cur.execute("SELECT pg_stat_force_next_flush()")
            wait_for(lambda: _dead_rows(table) >= 6000, timeout=10, interval=0.1)
        settings.MQ_VACUUM = False  # the operator vacuums on a schedule of their own
        assert broker.vacuum_unvacuumed() == []
        settings.MQ_VACUUM = True
        ran = threading.Event()
        vacuum = monitor.Background("test-vacuum", lambda: ran.set() if broker.vacuum_unvacuumed() else None)
        vacuum.poke()
        assert ran.wait(10)
        wait_for(lambda: _dead_rows(table) == 0, timeout=10, interval=0.1)
        assert table not in broker.vacuum_unvacuumed()  # nothing left to do
    finally:
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="VACUUM is PostgreSQL's")
def test_dead_rows_an_open_transaction_holds_are_not_vacuumed_again_and_again(transactional_db, monkeypatch):
    # VACUUM cannot reclaim rows a running transaction may still see; the
    # table stays past its threshold, and each check would scan it again.
    import psycopg

    from queues.notify import conninfo

    from .workers import wait_for

    table = Message._meta.db_table
    monkeypatch.setattr(broker.vacuum_unvacuumed, "rests_until", {})
    monkeypatch.setattr(broker.vacuum_unvacuumed, "REST_FACTOR", 1e6)  # rests for good after one vacuum
    q = make_queue()
    with connection.cursor() as cur:
        cur.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    holder = psycopg.connect(conninfo())
    try:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute(f"SELECT count(*) FROM {table}")  # its snapshot pins every row deleted from now on
        send(q, *range(6000))
        broker.purge(q)
        with connection.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush()")
        wait_for(lambda: _dead_rows(table) >= 6000, timeout=10, interval=0.1)
        assert table in broker.vacuum_unvacuumed()
        assert _dead_rows(table) >= 6000  # nothing could be reclaimed
        assert table not in broker.vacuum_unvacuumed()  # resting, not scanning it again
        holder.rollback()  # the transaction ends; its rest over, the next check reclaims them
        broker.vacuum_unvacuumed.rests_until.clear()
        assert table in broker.vacuum_unvacuumed()
        wait_for(lambda: _dead_rows(table) == 0, timeout=10, interval=0.1)
    finally:
        holder.close()
        with connection.cursor() as cur:
            cur.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def test_a_background_job_runs_once_at_a_time_and_outlives_its_failures(db):
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def job() -> None:
        runs.append(1)
        started.set()
        release.wait(5)
        if len(runs) == 1:
            raise RuntimeError("the first run fails")

    background = monitor.Background("test-job", job)
    background.poke()
    assert started.wait(5)
    background.poke()  # while it runs: dropped
    release.set()
    from .workers import wait_for

    wait_for(lambda: not background._running.locked(), timeout=5, interval=0.01)
    assert runs == [1]
    background.poke()  # the failure did not wedge it
    wait_for(lambda: len(runs) == 2 and not background._running.locked(), timeout=5, interval=0.01)


def test_retention_walks_up_the_ids_and_stops_at_the_first_young_message(db, monkeypatch):
    # No index on the enqueue time: retention reads the queue's messages in
    # id order, a batch at a time, and deletes those at or past the cutoff.
    from queues.broker import maintenance

    monkeypatch.setattr(maintenance, "RETENTION_BATCH", 3)
    q = make_queue("kept", retention=60)
    old = send(q, *range(5), now=T0)
    young = send(q, "y1", "y2", now=T0 + 100)
    assert broker.enforce_retention(now=T0 + 120) == 3  # one batch a tick
    assert broker.enforce_retention(now=T0 + 120) == 2
    assert broker.enforce_retention(now=T0 + 120) == 0
    left = sorted(str(i) for i in Message.objects.filter(queue=q).values_list("id", flat=True))
    assert left == sorted(young) and not set(old) & set(left)
    assert_counts_exact(q)


@pytest.mark.parametrize("state", ["ready", "delayed", "dead"])
def test_retention_reads_each_waiting_state_through_its_own_index_not_past_the_leases(db, monkeypatch, state):
    # Old messages in flight (never subject to retention) lie ahead of the
    # old waiting ones in id order: retention walks each waiting state's
    # ids, so it reads none of them, and it takes every priority's.
    from queues.broker import maintenance

    monkeypatch.setattr(maintenance, "RETENTION_CHUNK", 4)
    q = make_queue("kept", retention=60)
    leased = 20_000 if connection.vendor == "postgresql" else 30
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO queues_message (queue_id, state, priority, body, headers, group_key, delivery_count, "
            "enqueued_at, visible_at, last_error, lease_token, lease_expires_at) "
            "SELECT %s, 'in_flight', 0, '1', '{}', '', 1, %s, %s, '', 'x', %s FROM "
            + ("generate_series(1, %s)" if connection.vendor == "postgresql" else "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %s) SELECT i FROM n)"),
            [q.id, T0, T0, T0 + 3600, leased],
        )
    fields = {"delay": 10} if state == "delayed" else {}
    old = [m for p in (0, 5, 9) for m in send(q, p, p, priority=p, now=T0, **fields)]
    young = send(q, "y", now=T0 + 100, **fields)
    if state == "dead":
        Message.objects.filter(id__in=[*old, *young]).update(state="dead")
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("ANALYZE queues_message")
    before = _message_rows_read()
    assert broker.enforce_retention(now=T0 + 120) == len(old)
    read = _message_rows_read() - before
    assert set(Message.objects.filter(queue=q).exclude(state="in_flight").values_list("id", flat=True)) == {int(m) for m in young}
    assert Message.objects.filter(queue=q, state="in_flight").count() == leased
    if connection.vendor == "postgresql":
        assert read < 200, read  # the leases would be 20,000


def _message_rows_read() -> int:
    """Rows of the message table read so far in this transaction, through
    its indexes or by scanning it (PostgreSQL's own counters; 0 elsewhere)."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cur:
        cur.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
            "WHERE relname = 'queues_message'"
        )
        return int(cur.fetchone()[0])
