"""Operator actions on a queue: purge, redrive (dead-letter chains go home
to their first origin) and browse."""

from __future__ import annotations

from queues import broker
from queues.models import Message
from queues.states import MessageState as S

from .helpers import T0, assert_counts_exact, bodies, live_counts, make_queue, real_counts, receive, send

# ---------------------------------------------------------- purge, redrive --


def test_purge_deletes_every_message_and_zeroes_counts(db):
    q = make_queue(max_deliveries=1)
    send(q, "ready", "leased", "dies")
    send(q, "later", delay=100)
    receive(q)
    (d,) = receive(q)
    broker.nack(q, [d.receipt])
    assert real_counts(q) == {"ready": 1, "delayed": 1, "in_flight": 1, "dead": 1}
    assert broker.purge(q) == 4
    assert Message.objects.count() == 0
    assert live_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    assert_counts_exact(q)


def test_purging_a_dlq_clears_the_origin_dead_count(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    broker.purge(dlq)
    assert live_counts(q)["dead"] == 0
    assert_counts_exact(q, dlq)


def test_redrive_returns_dead_messages_in_place_to_ready(db):
    q = make_queue(max_deliveries=1)
    send(q, "a", "b", "c")
    for d in receive(q, 3):
        broker.nack(q, [d.receipt])
    assert live_counts(q)["dead"] == 3
    assert broker.redrive(q, max_messages=2, now=T0 + 1) == 2
    assert live_counts(q) == {"ready": 2, "delayed": 0, "in_flight": 0, "dead": 1}
    got = receive(q, 10, now=T0 + 1)
    assert bodies(got) == ["a", "b"] and all(d.delivery_count == 1 for d in got)
    assert broker.redrive(q) == 1
    assert_counts_exact(q)


def test_redrive_of_a_dlq_sends_messages_back_to_their_origin(db):
    dlq = make_queue("dlq")
    a = make_queue("a", max_deliveries=1, dead_letter_queue=dlq)
    b = make_queue("b", max_deliveries=1, dead_letter_queue=dlq)
    send(a, "from-a-1", "from-a-2")
    send(b, "from-b")
    for q in (a, b):
        for d in receive(q, 10):
            broker.nack(q, [d.receipt])
    assert live_counts(dlq)["ready"] == 3
    assert live_counts(a)["dead"] == 2 and live_counts(b)["dead"] == 1
    assert broker.redrive(dlq, max_messages=2) == 2
    assert_counts_exact(a, b, dlq)
    assert broker.redrive(dlq) == 1
    assert live_counts(dlq)["ready"] == 0
    assert sorted(bodies(receive(a, 10))) == ["from-a-1", "from-a-2"]
    assert bodies(receive(b, 10)) == ["from-b"]
    assert Message.objects.filter(origin_queue__isnull=False).count() == 0
    assert_counts_exact(a, b, dlq)


def test_redrive_leaves_leased_dlq_messages_alone(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x", "y")
    for d in receive(q, 2):
        broker.nack(q, [d.receipt])
    (held,) = receive(dlq)
    assert broker.redrive(dlq) == 1
    assert Message.objects.get(pk=held.id).queue_id == dlq.id
    assert broker.ack(dlq, [held.receipt]).done == [str(held.id)]
    assert_counts_exact(q, dlq)


def test_redrive_of_an_empty_queue_moves_nothing(db):
    q = make_queue()
    send(q, "ready")
    assert broker.redrive(q) == 0
    assert live_counts(q)["ready"] == 1


def test_a_redrive_moves_exactly_the_redrivable_messages(db):
    dlq = make_queue("dlq", max_deliveries=1)
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(dlq, "dead-in-place")
    broker.nack(dlq, [receive(dlq)[0].receipt])
    send(q, "held", "dies-again", "waits-1", "waits-2")
    for d in receive(q, 4):
        broker.nack(q, [d.receipt])
    receive(dlq)  # leased in the dead-letter queue: left to its holder
    broker.nack(dlq, [receive(dlq)[0].receipt])  # dead again, still from q
    send(dlq, "the-dlqs-own")
    assert [Message.objects.dead_of(x).count() for x in (q, dlq)] == [live_counts(q)["dead"], live_counts(dlq)["dead"]] == [4, 2]
    redrivable = set(Message.objects.redrivable(dlq).values_list("id", flat=True))
    before = {m.id: (m.queue_id, m.state) for m in Message.objects.all()}
    assert broker.redrive(dlq) == len(redrivable) == 4
    after = {m.id: (m.queue_id, m.state) for m in Message.objects.all()}
    assert {i for i in before if after[i] != before[i]} == redrivable
    assert_counts_exact(q, dlq)


def test_message_dying_again_in_its_dlq_counts_once_and_redrives_home(db):
    dlq = make_queue("dlq", max_deliveries=1)
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    broker.nack(dlq, [receive(dlq)[0].receipt])
    m = Message.objects.get()
    assert (m.queue_id, m.state, m.origin_queue_id) == (dlq.id, S.DEAD, q.id)
    assert live_counts(q)["dead"] == 1 and live_counts(dlq)["dead"] == 1
    assert_counts_exact(q, dlq)
    assert broker.redrive(dlq) == 1
    m.refresh_from_db()
    assert (m.queue_id, m.state, m.origin_queue_id) == (q.id, S.READY, None)
    assert_counts_exact(q, dlq)


def test_chain_of_dead_letter_queues_keeps_the_first_origin(db):
    d2 = make_queue("d2")
    d1 = make_queue("d1", max_deliveries=1, dead_letter_queue=d2)
    q = make_queue("q", max_deliveries=1, dead_letter_queue=d1)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    broker.nack(d1, [receive(d1)[0].receipt])
    m = Message.objects.get()
    assert (m.queue_id, m.origin_queue_id) == (d2.id, q.id)
    assert live_counts(q)["dead"] == 1 and live_counts(d1)["dead"] == 0
    assert_counts_exact(q, d1, d2)
    assert broker.redrive(d2) == 1
    assert Message.objects.get().queue_id == q.id
    assert_counts_exact(q, d1, d2)


# ------------------------------------------------------------------ browse --


def test_browse_by_state_with_pagination_does_not_lease(db):
    q = make_queue(max_deliveries=1)
    ids = send(q, *range(7))
    send(q, "later", delay=60)
    page1 = broker.browse(q, state="ready", limit=3)
    page2 = broker.browse(q, state="ready", limit=3, after=page1[-1].pk)
    page3 = broker.browse(q, state="ready", limit=3, after=page2[-1].pk)
    assert [str(m.pk) for m in page1 + page2 + page3] == ids
    assert len(page3) == 1
    assert [m.state for m in Message.objects.all()].count(S.IN_FLIGHT) == 0
    assert [m.body for m in broker.browse(q, state="delayed")] == ['"later"']
    receive(q, 2)
    assert len(broker.browse(q, state="in_flight")) == 2


def test_browse_ready_goes_by_id_across_priorities_both_ways(db):
    q = make_queue()
    ids = [m for i in range(12) for m in send(q, i, priority=(7 * i) % 10)]
    send(q, "later", delay=60)
    receive(q, 2)  # the two of the highest priorities, 9 and 8
    waiting = [m for i, m in enumerate(ids) if (7 * i) % 10 < 8]
    pages, after = [], None
    for _ in range(3):
        page = broker.browse(q, state="ready", limit=4, after=after)
        pages += [str(m.pk) for m in page]
        after = page[-1].pk
    assert pages == waiting
    newest = broker.browse(q, state="ready", limit=4, newest=True)
    older = broker.browse(q, state="ready", limit=20, newest=True, after=newest[-1].pk)
    assert [str(m.pk) for m in newest + older] == waiting[::-1]
    assert broker.browse(q, state="ready", after=int(waiting[-1])) == []


def test_browse_dead_includes_messages_dead_lettered_out(db):
    dlq = make_queue("dlq")
    q = make_queue("q", max_deliveries=1, dead_letter_queue=dlq)
    send(q, "x")
    broker.nack(q, [receive(q)[0].receipt])
    (m,) = broker.browse(q, state="dead")
    assert m.to_dict()["origin_queue"] == "q" and m.to_dict()["queue"] == "dlq"
