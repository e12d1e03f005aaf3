"""The message state machine (``queues.states``) held against the broker.

Every public broker operation that changes messages runs here, and each
message's row is read before and after: a row that appeared, changed or went
away is a transition of that operation, and each must be one the state
machine allows (``can_transition``; ``INITIAL_STATES`` for a new row). The
broker's statements write states as SQL text, so this is where a statement
that strays from the machine, or a machine that forgets what the broker
really does, is caught."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from django.db import transaction

from queues import broker, notify, states
from queues.models import Message, Queue
from queues.states import MessageState as S

from .workers import wait_for

T0 = 1_900_000_000.0  # a fixed "now", well after any real clock in the test run

Transition = tuple[S | None, S | None]
# What makes a row's change a transition: its state, and where and how it is
# held (a move to another queue, a new lease or its extension).
COLUMNS = ("state", "queue_id", "lease_token", "lease_expires_at", "visible_at", "origin_queue_id", "consumer_id", "delivery_count")


def snapshot() -> dict[int, tuple[Any, ...]]:
    """Every message's row, by id."""
    return {row[0]: row[1:] for row in Message.objects.values_list("id", *COLUMNS)}


def transitions(before: dict[int, tuple[Any, ...]], after: dict[int, tuple[Any, ...]]) -> set[Transition]:
    """(state before, state after) of each message that changed; None is a
    message that did not exist (before) or was deleted (after)."""
    found: set[Transition] = set()
    for mid in before.keys() | after.keys():
        old, new = before.get(mid), after.get(mid)
        if old != new:
            found.add((S(old[0]) if old else None, S(new[0]) if new else None))
    return found


def named(t: Transition) -> str:
    source, target = t
    return f"{source.value if source else 'new'} -> {target.value if target else 'deleted'}"


def allowed(t: Transition) -> bool:
    source, target = t
    if source is None:
        return target is not None and target in states.INITIAL_STATES
    return states.can_transition(source, target)


class Recorder:
    """Runs broker operations, checks each one's transitions at once and
    remembers which operations made which."""

    def __init__(self) -> None:
        self.last: set[Transition] = set()
        self.seen: dict[Transition, set[str]] = defaultdict(set)

    def __call__(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        before = snapshot()
        result = fn(*args, **kwargs)
        self.last = transitions(before, snapshot())
        refused = sorted(named(t) for t in self.last if not allowed(t))
        assert not refused, f"{operation} made transitions the state machine does not allow: {', '.join(refused)}"
        for t in self.last:
            self.seen[t].add(operation)
        return result


# --------------------------------------------------------------- helpers --


def make_queue(name: str, **config: Any) -> Queue:
    broker.put_queue(name, config)
    return broker.get_queue(name)


def send(rec: Recorder, queue: Queue, *bodies: Any, now: float = T0, **fields: Any) -> list[int]:
    messages = [broker.NewMessage(body=orjson.dumps(b), **fields) for b in bodies]
    return [int(r.id) for r in rec("publish", broker.publish, queue, messages, now=now)]


def receive(rec: Recorder, queue: Queue, n: int = 1, *, now: float = T0, **kw: Any) -> list[broker.Delivery]:
    deliveries: list[broker.Delivery] = rec("receive", broker.receive, queue, max_messages=n, now=now, **kw)
    return deliveries


def one_of_each(rec: Recorder, queue: Queue, *, now: float = T0, dead: bool = True) -> dict[S, int]:
    """A message in each state in ``queue`` (which has no dead-letter queue)."""
    [flight] = send(rec, queue, "in flight", priority=9, now=now)
    assert [d.id for d in receive(rec, queue, now=now)] == [flight]
    [ready, dead_one] = send(rec, queue, "ready", "dead", now=now)
    [delayed] = send(rec, queue, "delayed", delay=3600, now=now)
    made = {S.READY: ready, S.DELAYED: delayed, S.IN_FLIGHT: flight}
    if dead:
        rec("dead_letter_now", broker.dead_letter_now, [dead_one], "by hand", now=now)
        made[S.DEAD] = dead_one
    else:
        rec("delete_messages", broker.delete_messages, [dead_one])
    return made


def into_dead_letter_queue(rec: Recorder, n: int = 1) -> tuple[Queue, Queue, list[int]]:
    """``home`` and its dead-letter queue ``dlq``, holding n messages that
    died in ``home`` (ready there, with ``home`` as their origin)."""
    dlq = make_queue("dlq")
    home = make_queue("home", dead_letter_queue="dlq")
    ids = send(rec, home, *range(n))
    rec("dead_letter_now", broker.dead_letter_now, ids, "by hand", now=T0)
    assert rec.last == {(S.READY, S.READY)}
    return home, dlq, ids


# -------------------------------------------------------------- scenarios --

SCENARIOS: dict[str, Callable[[Recorder], None]] = {}


def scenario(fn: Callable[[Recorder], None]) -> Callable[[Recorder], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def publish(rec: Recorder) -> None:
    q = make_queue("q")
    send(rec, q, "now")
    assert rec.last == {(None, S.READY)}
    send(rec, q, "later", delay=60)
    assert rec.last == {(None, S.DELAYED)}
    send(rec, q, "once", dedup_id="k")
    send(rec, q, "once", dedup_id="k")  # a duplicate: nothing new
    assert rec.last == set()


@scenario
def receive_and_promote(rec: Recorder) -> None:
    q = make_queue("q")
    send(rec, q, "now")
    send(rec, q, "soon", delay=10)
    receive(rec, q, 10, now=T0)
    assert rec.last == {(S.READY, S.IN_FLIGHT)}
    # Come due: the receive makes it ready and claims it in the same call.
    receive(rec, q, 10, now=T0 + 10)
    assert rec.last == {(S.DELAYED, S.IN_FLIGHT)}
    send(rec, q, "later", delay=10, now=T0 + 10)
    rec("promote_due", broker.promote_due, now=T0 + 15)
    assert rec.last == set()
    rec("promote_due", broker.promote_due, now=T0 + 20)
    assert rec.last == {(S.DELAYED, S.READY)}
    fifo = make_queue("fifo", fifo=True)
    send(rec, fifo, "first", "second", group="g")
    receive(rec, fifo, 10)
    assert rec.last == {(S.READY, S.IN_FLIGHT)}
    paused = make_queue("paused", paused=True)
    send(rec, paused, "held")
    receive(rec, paused)
    assert rec.last == set()


@scenario
def ack_and_extend(rec: Recorder) -> None:
    q = make_queue("q")
    send(rec, q, "a", "b")
    first, second = receive(rec, q, 2)
    rec("extend", broker.extend, q, [first.receipt], 60, now=T0 + 1)
    assert rec.last == {(S.IN_FLIGHT, S.IN_FLIGHT)}
    rec("ack", broker.ack, q, [first.receipt])
    assert rec.last == {(S.IN_FLIGHT, None)}
    rec("ack", broker.ack, q, [first.receipt])  # stale
    assert rec.last == set()
    send(rec, q, "c")
    rec("ack_and_receive", broker.ack_and_receive, q, [second.receipt], max_messages=5, now=T0)
    assert rec.last == {(S.IN_FLIGHT, None), (S.READY, S.IN_FLIGHT)}


@scenario
def nack(rec: Recorder) -> None:
    q = make_queue("q", max_deliveries=0)
    send(rec, q, "a", "b")
    first, second = receive(rec, q, 2)
    rec("nack", broker.nack, q, [first.receipt], now=T0)
    assert rec.last == {(S.IN_FLIGHT, S.READY)}
    rec("nack", broker.nack, q, [second.receipt], delay=30, now=T0)
    assert rec.last == {(S.IN_FLIGHT, S.DELAYED)}


@scenario
def expire_leases(rec: Recorder) -> None:
    q = make_queue("q")
    send(rec, q, "a")
    receive(rec, q, visibility_timeout=30, now=T0)
    rec("expire_leases", broker.expire_leases, now=T0 + 29)
    assert rec.last == set()
    rec("expire_leases", broker.expire_leases, now=T0 + 31)
    assert rec.last == {(S.IN_FLIGHT, S.READY)}


@scenario
def max_deliveries(rec: Recorder) -> None:
    # Used up by a nack, and by a lease running out: dead in place without a
    # dead-letter queue, ready in it with one.
    make_queue("dlq")
    for name, config, outcome in (("plain", {}, S.DEAD), ("guarded", {"dead_letter_queue": "dlq"}, S.READY)):
        q = make_queue(name, max_deliveries=1, **config)
        send(rec, q, "a", "b")
        first, _second = receive(rec, q, 2, visibility_timeout=30)
        rec("nack", broker.nack, q, [first.receipt], now=T0)
        assert rec.last == {(S.IN_FLIGHT, outcome)}, name
        rec("expire_leases", broker.expire_leases, now=T0 + 31)
        assert rec.last == {(S.IN_FLIGHT, outcome)}, name
    assert not Message.objects.filter(queue__name="guarded").exists()


@scenario
def requeue(rec: Recorder) -> None:
    q = make_queue("q")
    made = one_of_each(rec, q)
    rec("requeue", broker.requeue, list(made.values()), now=T0)
    # The ready message in its own queue is left alone.
    assert rec.last == {(S.DEAD, S.READY), (S.DELAYED, S.READY), (S.IN_FLIGHT, S.READY)}
    home, _dlq, ids = into_dead_letter_queue(rec)
    rec("requeue", broker.requeue, ids, now=T0)
    assert rec.last == {(S.READY, S.READY)}  # home again
    assert Message.objects.get(pk=ids[0]).queue_id == home.id


@scenario
def move(rec: Recorder) -> None:
    source, target = make_queue("source"), make_queue("target")
    made = one_of_each(rec, source)
    rec("move", broker.move, list(made.values()), target, now=T0)
    assert rec.last == {(S.READY, S.READY), (S.DELAYED, S.DELAYED), (S.IN_FLIGHT, S.READY), (S.DEAD, S.READY)}


@scenario
def dead_letter_now(rec: Recorder) -> None:
    q = make_queue("q")
    made = one_of_each(rec, q, dead=False)
    rec("dead_letter_now", broker.dead_letter_now, list(made.values()), "by hand", now=T0)
    assert rec.last == {(S.READY, S.DEAD), (S.DELAYED, S.DEAD), (S.IN_FLIGHT, S.DEAD)}
    rec("dead_letter_now", broker.dead_letter_now, list(made.values()), "again", now=T0)  # dead ones stay
    assert rec.last == set()
    make_queue("dlq")
    home = make_queue("home", dead_letter_queue="dlq")
    made = one_of_each(rec, home, dead=False)
    rec("dead_letter_now", broker.dead_letter_now, list(made.values()), "by hand", now=T0)
    assert rec.last == {(S.READY, S.READY), (S.DELAYED, S.READY), (S.IN_FLIGHT, S.READY)}


@scenario
def deletions(rec: Recorder) -> None:
    deleting: dict[str, Callable[[Queue, list[int]], Any]] = {
        "delete_messages": lambda queue, ids: broker.delete_messages(ids),
        "purge": lambda queue, ids: broker.purge(queue),
        "delete_queue": lambda queue, ids: broker.delete_queue(queue),
    }
    for operation, delete in deleting.items():
        q = make_queue(operation)
        made = one_of_each(rec, q)
        rec(operation, delete, q, list(made.values()))
        assert rec.last == {(state, None) for state in S}, operation


@scenario
def redrive(rec: Recorder) -> None:
    q = make_queue("q")
    one_of_each(rec, q)
    rec("redrive", broker.redrive, q, now=T0)
    assert rec.last == {(S.DEAD, S.READY)}  # live messages are left alone
    _home, dlq, _ids = into_dead_letter_queue(rec, 3)
    held, delayed = receive(rec, dlq, 2)
    rec("nack", broker.nack, dlq, [delayed.receipt], delay=60, now=T0)
    assert rec.last == {(S.IN_FLIGHT, S.DELAYED)}
    rec("redrive", broker.redrive, dlq, now=T0)
    # Home go the waiting ones; the one leased in the dead-letter queue stays.
    assert rec.last == {(S.READY, S.READY), (S.DELAYED, S.READY)}
    assert Message.objects.get(pk=held.id).queue_id == dlq.id


@scenario
def releases(rec: Recorder) -> None:
    q = make_queue("q")
    consumer = broker.register_consumer("w", ["q"], {}, None)
    send(rec, q, *range(6))
    receive(rec, q, 2, consumer_id=consumer.pk)
    rec("release_consumer", broker.release_consumer, consumer.pk, now=T0)
    assert rec.last == {(S.IN_FLIGHT, S.READY)}
    receive(rec, q, 2, consumer_id=consumer.pk)
    rec("leave", broker.leave, consumer.pk)
    assert rec.last == {(S.IN_FLIGHT, S.READY)}
    stream, unanswered = receive(rec, q, 2)
    rec("release", broker.release, q, [stream.receipt], reason="stream closed", now=T0)
    assert rec.last == {(S.IN_FLIGHT, S.READY)}
    rec("release_unanswered", broker.release_unanswered, q.id, [unanswered])
    assert rec.last == {(S.IN_FLIGHT, S.READY)}


@scenario
def enforce_retention(rec: Recorder) -> None:
    q = make_queue("q", retention=60)
    one_of_each(rec, q, now=T0)
    rec("enforce_retention", broker.enforce_retention, now=T0 + 30)
    assert rec.last == set()
    rec("enforce_retention", broker.enforce_retention, now=T0 + 61)
    # A leased message is being worked on: retention waits for its outcome.
    assert rec.last == {(S.READY, None), (S.DELAYED, None), (S.DEAD, None)}


# ------------------------------------------------------------------ tests --


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_operation_makes_only_transitions_the_state_machine_allows(db: None, name: str) -> None:
    SCENARIOS[name](Recorder())


def run_each_rolled_back(rec: Recorder) -> None:
    for fn in SCENARIOS.values():
        with transaction.atomic():
            fn(rec)
            transaction.set_rollback(True)
        broker.forget_queues()


def test_every_transition_the_state_machine_allows_is_made_by_some_operation(db: None) -> None:
    # The table holds no transition the broker never makes: each entry is
    # seen here (a message created in flight: the next test).
    rec = Recorder()
    run_each_rolled_back(rec)
    table = {(source, target) for source, targets in states.TRANSITIONS.items() for target in targets}
    created = {(None, state) for state in states.INITIAL_STATES if state != S.IN_FLIGHT}
    assert table | created == set(rec.seen), {named(t): sorted(ops) for t, ops in rec.seen.items()}


@pytest.fixture
def waiting_receive(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Queue, Any]]:
    """A queue and a receive waiting on it in this process (on a loop of its
    own), offering to take one message: what a long poll is while it waits."""
    # The LISTEN connection is PostgreSQL's business, not this test's.
    monkeypatch.setattr(notify, "_ensure_watch", lambda loop: None)
    queue = make_queue("q")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    waiting: dict[str, notify.Waiter] = {}

    async def wait() -> object:
        with notify.waiter(queue.id, notify.Offer(1)) as w:
            waiting["w"] = w
            return await w.wait(30)

    pending = asyncio.run_coroutine_threadsafe(wait(), loop)
    try:
        wait_for(lambda: "w" in waiting and waiting["w"].armed, timeout=5, interval=0.01)
        yield queue, pending
    finally:
        loop.call_soon_threadsafe(loop.stop)


@pytest.mark.django_db(transaction=True)
def test_a_send_to_a_waiting_receive_creates_its_message_in_flight(waiting_receive: tuple[Queue, Any]) -> None:
    queue, pending = waiting_receive
    rec = Recorder()
    [sent] = send(rec, queue, "handed")
    assert rec.last == {(None, S.IN_FLIGHT)}
    [delivery] = pending.result(5)
    assert delivery.id == sent


# The check itself must be able to fail: against a table that lacks a
# transition the broker makes, the operation that makes it is named.


def test_a_transition_missing_from_the_table_fails_the_operation_that_makes_it(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = {**states.TRANSITIONS, S.READY: states.TRANSITIONS[S.READY] - {S.IN_FLIGHT}}
    monkeypatch.setattr(states, "TRANSITIONS", broken)
    with pytest.raises(AssertionError, match=r"^receive made transitions .* not allow: ready -> in_flight\n"):
        SCENARIOS["receive_and_promote"](Recorder())


def test_a_state_missing_from_the_initial_states_fails_the_send(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(states, "INITIAL_STATES", states.INITIAL_STATES - {S.DELAYED})
    with pytest.raises(AssertionError, match=r"^publish made transitions .* not allow: new -> delayed\n"):
        SCENARIOS["publish"](Recorder())
