"""Creating, changing and deleting queues, and what a deleted dead-letter
queue leaves behind."""

from __future__ import annotations

import pytest

from queues import broker
from queues.exceptions import InvalidValue, QueueInUse, QueueNotFound
from queues.models import Message, Queue

from .helpers import T0, assert_counts_exact, live_counts, make_queue, receive, send


def test_put_queue_creates_then_updates(db):
    q, created = broker.put_queue("q", {"visibility_timeout": 7})
    assert created and q.visibility_timeout == 7 and q.max_deliveries == 5
    q, created = broker.put_queue("q", {"max_deliveries": 0})
    assert not created and q.visibility_timeout == 7 and q.max_deliveries == 0


def test_a_queue_cannot_be_its_own_dead_letter_queue(db):
    with pytest.raises(InvalidValue):
        broker.put_queue("q", {"dead_letter_queue": "q"})


def test_dead_letter_queue_must_exist(db):
    with pytest.raises(InvalidValue):
        broker.put_queue("q", {"dead_letter_queue": "nope"})
    assert not Queue.objects.filter(name="q").exists()


def test_get_queue_of_unknown_name_raises(db):
    with pytest.raises(QueueNotFound):
        broker.get_queue("nope")


def test_deleting_a_dead_letter_queue_in_use_is_refused(db):
    dlq = make_queue("dlq")
    make_queue("q", dead_letter_queue=dlq)
    with pytest.raises(QueueInUse):
        broker.delete_queue(dlq)
    assert Queue.objects.filter(name="dlq").exists()


def test_delete_queue_removes_its_messages(db):
    q = make_queue()
    send(q, 1, 2)
    broker.delete_queue(q)
    assert Message.objects.count() == 0
    assert not Queue.objects.filter(name="q").exists()


def test_deleting_a_dlq_releases_the_origin_dead_count(db):
    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq, max_deliveries=1)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt], now=T0)
    assert live_counts(q)["dead"] == 1
    broker.put_queue("q", {"dead_letter_queue": None})
    broker.delete_queue(broker.get_queue("dlq"))
    assert_counts_exact(q)
    assert live_counts(q)["dead"] == 0
