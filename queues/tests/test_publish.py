"""Publishing, called directly with a controlled clock: batches keep their
order and fields, a too-large body refuses the whole batch, delays, and dedup
ids within their window."""

from __future__ import annotations

import pytest
from django.db import connection

from queues import broker
from queues.backends import dialect
from queues.backends.common import NEW_MESSAGE_COLUMNS
from queues.broker.publish import new_rows
from queues.exceptions import MessageTooLarge
from queues.models import Message
from queues.states import MessageState as S

from .helpers import T0, assert_counts_exact, bodies, make_queue, receive, send


def test_batch_publish_returns_ids_in_input_order(db):
    q = make_queue()
    ids = send(q, *range(50))
    assert len(set(ids)) == 50
    got = receive(q, 50)
    assert [str(d.id) for d in got] == ids
    assert bodies(got) == list(range(50))


def test_a_batch_keeps_its_order_ids_and_fields(db):
    q = make_queue()
    results = broker.publish(
        q,
        [
            broker.NewMessage(body=b'"a"', priority=3, headers={"k": "v"}),
            broker.NewMessage(body=b'"b"', delay=60, group="g"),
            broker.NewMessage(body=b'"c"', dedup_id="d1"),
        ],
    )
    ids = [int(r.id) for r in results]
    assert ids == sorted(ids)
    rows = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
    a, b, c = (rows[i] for i in ids)
    assert (a.body, a.priority, a.headers, a.state) == ('"a"', 3, '{"k":"v"}', S.READY)
    assert (b.body, b.group_key, b.state) == ('"b"', "g", S.DELAYED)
    assert b.visible_at == pytest.approx(b.enqueued_at + 60)
    assert (c.body, c.dedup_id, c.delivery_count, c.lease_token, c.consumer_id) == ('"c"', "d1", 0, None, None)


@pytest.mark.parametrize("dedup", [False, True], ids=["one statement", "with dedup ids"])
def test_every_column_is_stored_as_made_whether_the_batch_shares_its_value_or_not(db, dedup):
    """On PostgreSQL a column every row shares goes once, as a parameter of
    its own (backends.postgresql.json_rows): the rows are the same."""
    q = make_queue()
    messages = [broker.NewMessage(b'"same"', dedup_id=f"d{i}" if dedup else None) for i in range(3)]
    messages.append(broker.NewMessage(b'{"x":1}', priority=5, delay=30, group="g", headers={"h": "v"}))
    results = broker.publish(q, messages, now=T0)
    names = [name for name, _ in NEW_MESSAGE_COLUMNS]
    stored = list(Message.objects.filter(pk__in=[int(r.id) for r in results]).order_by("pk").values_list(*names))
    assert stored == new_rows(q, messages, T0)
    (alone,) = broker.publish(q, [broker.NewMessage(b"[]", priority=9)], now=T0 + 1)
    assert list(Message.objects.filter(pk=int(alone.id)).values_list(*names)) == new_rows(q, [broker.NewMessage(b"[]", priority=9)], T0 + 1)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the JSON rows are PostgreSQL's")
def test_on_postgresql_the_columns_a_send_shares_travel_once_and_bodies_always_in_the_rows(db):
    q = make_queue()
    rows = new_rows(q, [broker.NewMessage(b'"same"') for _ in range(3)], T0)
    sql, params = dialect().insert_messages(q.id, rows)
    assert "%s::bigint AS queue_id" in sql and "%s::float8 AS enqueued_at" in sql and "(e->>0)::text AS body" in sql
    # The last parameter is the queue checked (``queue_held``).
    assert params[-2:] == ['[["\\"same\\""],["\\"same\\""],["\\"same\\""]]', q.id]


def test_publish_is_all_or_nothing_when_one_body_is_too_large(db):
    q = make_queue(max_message_bytes=10)
    with pytest.raises(MessageTooLarge):
        send(q, "ok", "x" * 50)
    assert Message.objects.count() == 0
    assert_counts_exact(q)


def test_max_message_bytes_is_inclusive(db):
    q = make_queue(max_message_bytes=10)
    send(q, "12345678")  # 10 bytes of JSON with the quotes
    with pytest.raises(MessageTooLarge):
        send(q, "123456789")


def test_queue_default_delay_applies_unless_the_message_overrides_it(db):
    q = make_queue(delay=30)
    send(q, "default", now=T0)
    send(q, "immediate", delay=0, now=T0)
    assert bodies(receive(q, 10, now=T0 + 1)) == ["immediate"]
    assert bodies(receive(q, 10, now=T0 + 30)) == ["default"]


# ------------------------------------------------------------------- dedup --


def test_dedup_id_within_window_returns_first_id_and_enqueues_nothing(db):
    q = make_queue()
    first = broker.publish(q, [broker.NewMessage(body=b'"a"', dedup_id="k")], now=T0)
    again = broker.publish(q, [broker.NewMessage(body=b'"b"', dedup_id="k")], now=T0 + 60)
    assert first[0].duplicate is False
    assert again[0].duplicate is True and again[0].id == first[0].id
    assert Message.objects.count() == 1
    assert_counts_exact(q)


def test_dedup_holds_after_the_first_message_was_acked(db):
    q = make_queue()
    (first,) = send(q, "a", dedup_id="k")
    broker.ack(q, [receive(q)[0].receipt])
    again = broker.publish(q, [broker.NewMessage(body=b'"a"', dedup_id="k")], now=T0 + 100)
    assert again[0].duplicate is True and again[0].id == first
    assert Message.objects.count() == 0
    assert receive(q, now=T0 + 100) == []


def test_dedup_id_is_forgotten_after_the_window(db, settings):
    settings.MQ_DEDUP_WINDOW_SECONDS = 300
    q = make_queue()
    (first,) = send(q, "a", dedup_id="k", now=T0)
    later = broker.publish(q, [broker.NewMessage(body=b'"a"', dedup_id="k")], now=T0 + 301)
    assert later[0].duplicate is False and later[0].id != first
    assert Message.objects.count() == 2


def test_dedup_within_one_batch(db):
    q = make_queue()
    results = broker.publish(
        q,
        [
            broker.NewMessage(body=b'"a"', dedup_id="k"),
            broker.NewMessage(body=b'"b"'),
            broker.NewMessage(body=b'"c"', dedup_id="k"),
        ],
        now=T0,
    )
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].id == results[0].id != results[1].id
    assert bodies(receive(q, 10)) == ["a", "b"]


def test_dedup_is_per_queue(db):
    a, b = make_queue("a"), make_queue("b")
    send(a, 1, dedup_id="k")
    res = broker.publish(b, [broker.NewMessage(body=b"1", dedup_id="k")], now=T0)
    assert res[0].duplicate is False
    assert Message.objects.count() == 2


def test_batch_of_a_thousand_with_dedup_ids(db):
    q = make_queue()
    batch = [broker.NewMessage(body=b"1", dedup_id=f"k{i}") for i in range(1000)]
    first = broker.publish(q, batch, now=T0)
    assert [r.duplicate for r in first] == [False] * 1000
    again = broker.publish(q, batch, now=T0 + 1)
    assert [r.duplicate for r in again] == [True] * 1000
    assert [r.id for r in again] == [r.id for r in first]
    assert Message.objects.count() == 1000
    got = receive(q, 100)
    assert broker.ack(q, [d.receipt for d in got]).stale == []
    assert_counts_exact(q)
