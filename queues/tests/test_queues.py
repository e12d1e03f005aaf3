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


@pytest.mark.parametrize("dedup", [False, True], ids=["one_statement", "deduplicated"])
def test_a_send_to_a_queue_deleted_since_it_was_looked_up_is_refused_and_writes_nothing(db, dedup):
    """Messages have no foreign-key constraint on their queue: the send
    itself checks that its queue still exists."""
    q = make_queue()
    broker.delete_queue(Queue.objects.get(pk=q.pk))
    with pytest.raises(QueueNotFound):
        send(q, 1, 2, **({"dedup_id": "d"} if dedup else {}))
    assert not Message.objects.exists()


def test_moving_messages_into_a_deleted_queue_is_refused(db):
    q, gone = make_queue("q"), make_queue("gone")
    ids = send(q, 1, 2)
    broker.delete_queue(Queue.objects.get(pk=gone.pk))
    with pytest.raises(QueueNotFound):
        broker.move(ids, gone)
    assert sorted(Message.objects.filter(queue=q).values_list("state", flat=True)) == ["ready", "ready"]


@pytest.mark.parametrize("action", ["requeue", "redrive"])
def test_a_dead_lettered_message_whose_origin_is_gone_goes_back_to_where_it_is(db, action):
    """An origin deleted by a delete that raced the dead-lettering (the
    delete nulls the origins it finds) leaves an id that names no queue:
    requeue and redrive keep such a message in the queue it is in."""
    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue=dlq, max_deliveries=1)
    (mid,) = send(q, "x")
    broker.nack(q, [receive(q)[0].receipt], now=T0)
    Message.objects.filter(pk=mid).update(origin_queue_id=q.pk + 1000)
    if action == "requeue":
        assert broker.requeue([mid]) == 1
    else:
        assert broker.redrive(dlq) == 1
    m = Message.objects.get(pk=mid)
    assert (m.queue_id, m.state, m.origin_queue_id) == (dlq.pk, "ready", None)


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
