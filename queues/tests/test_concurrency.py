"""Real concurrency on the real database: threads, each with its own
connection, racing on one queue. Each message is acked exactly once, none is
lost, none is left in flight, and the counters equal the real counts."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import orjson
import pytest
from django.db import connection, transaction

from conftest import Api, make_token
from queues import broker, monitor
from queues.broker import maintenance
from queues.exceptions import QueueNotFound
from queues.models import Message, Queue

DEADLINE_SECONDS = 60  # a hung worker fails the test instead of hanging it


def run_threads(n: int, target: Callable[[int], Any]) -> list[BaseException]:
    """Run target(i) in n threads, each closing its own connection; returns their errors."""
    errors: list[BaseException] = []

    def wrapper(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_SECONDS)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return errors


def fill(queue: Queue, n: int, **fields: Any) -> list[int]:
    ids: list[int] = []
    for start in range(0, n, 1000):
        batch = [broker.NewMessage(body=orjson.dumps(i), **fields) for i in range(start, min(n, start + 1000))]
        ids += [int(r.id) for r in broker.publish(queue, batch)]
    return ids


def assert_counters_match(queue: Queue, **totals: int) -> None:
    broker.fold_stats()
    c = broker.queue_counts([queue.id])[queue.id]
    real = Counter(Message.objects.filter(queue=queue).values_list("state", flat=True))
    assert (c.ready, c.delayed, c.in_flight) == (real["ready"], real["delayed"], real["in_flight"])
    for name, value in totals.items():
        assert c.totals[name] == value, (name, c.totals[name], value)


def lease_and_ack(riding: bool) -> Callable[[Queue, list[str], int], tuple[list[broker.Delivery], broker.ReceiptResult]]:
    """A consumer's step: ack what it held, lease up to n. ``riding``: the
    acks ride on the receive (one statement on PostgreSQL); else an ack call,
    then a receive."""

    def step(queue: Queue, held: list[str], n: int) -> tuple[list[broker.Delivery], broker.ReceiptResult]:
        if riding:
            return broker.ack_and_receive(queue, held, max_messages=n)
        result = broker.ack(queue, held) if held else broker.ReceiptResult()
        return broker.receive(queue, max_messages=n), result

    return step


@pytest.mark.parametrize("riding", [False, True], ids=["ack_then_receive", "acks_ride_on_receive"])
def test_many_consumers_drain_thousands_each_acked_exactly_once(transactional_db, riding):
    step = lease_and_ack(riding)
    n_messages, n_workers = 5000, 6
    broker.put_queue("drain", {"visibility_timeout": 300})
    queue = broker.get_queue("drain")
    ids = fill(queue, n_messages)
    received: list[list[int]] = [[] for _ in range(n_workers)]
    acked: list[list[str]] = [[] for _ in range(n_workers)]
    stale: list[str] = []
    deadline = time.monotonic() + DEADLINE_SECONDS

    def consume(i: int) -> None:
        empty = 0
        held: list[str] = []
        while empty < 3 and time.monotonic() < deadline:
            got, result = step(queue, held, 10)
            acked[i] += result.done
            stale.extend(result.stale)
            held = [d.receipt for d in got]
            if not got:
                empty += 1
                time.sleep(0.01)
                continue
            empty = 0
            received[i] += [d.id for d in got]

    assert run_threads(n_workers, consume) == []
    all_received = [m for r in received for m in r]
    all_acked = [int(m) for a in acked for m in a]
    assert stale == []
    # No message was handed to two consumers, none was acked twice, none lost.
    assert len(all_received) == len(set(all_received)) == n_messages
    assert sorted(all_acked) == sorted(ids)
    assert Message.objects.filter(queue=queue).count() == 0
    # The work really was shared.
    assert sum(1 for r in received if r) >= 2
    assert_counters_match(queue, sent_total=n_messages, received_total=n_messages, acked_total=n_messages)


@pytest.mark.parametrize("riding", [False, True], ids=["ack_then_receive", "acks_ride_on_receive"])
def test_consumers_racing_the_lease_sweep_never_lose_or_double_ack(transactional_db, riding):
    """The monitor expires leases (as if time jumped) while consumers ack:
    every ack either wins or is stale, each message is acked exactly once.
    With acks riding on receives, six consumers: a receive's acks then often
    name rows the sweep gave to another consumer, whose own acks name rows
    it was given (a deadlock, until the acks went first: ACKS_FIRST)."""
    step = lease_and_ack(riding)
    n_messages, n_workers = (20000, 6) if riding else (2000, 3)
    broker.put_queue("race", {"visibility_timeout": 30, "max_deliveries": 0})
    queue = broker.get_queue("race")
    ids = fill(queue, n_messages)
    acked: list[str] = []
    stale: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    deadline = time.monotonic() + DEADLINE_SECONDS

    def consume(i: int) -> None:
        if i == n_workers:  # the monitor
            while not done.is_set() and time.monotonic() < deadline:
                monitor.tick(now=time.time() + 60)
                time.sleep(0.005)
            return
        held: list[str] = []
        while not done.is_set() and time.monotonic() < deadline:
            got, result = step(queue, held, 20)
            with lock:
                acked.extend(result.done)
                stale.extend(result.stale)
            held = [d.receipt for d in got]
            if not got:
                if not Message.objects.filter(queue=queue).exists():
                    done.set()
                time.sleep(0.005)
                continue
            time.sleep(0.001)  # hold the leases a moment: the sweep may take them
        if held:  # the others finished meanwhile: these receipts are stale
            result = broker.ack(queue, held)
            with lock:
                acked.extend(result.done)
                stale.extend(result.stale)

    assert run_threads(n_workers + 1, consume) == []
    assert sorted(int(m) for m in acked) == sorted(ids)  # exactly once each
    assert Message.objects.count() == 0
    assert_counters_match(queue, acked_total=n_messages)
    c = broker.queue_counts([queue.id])[queue.id]
    assert c.totals["received_total"] == n_messages + c.totals["redelivered_total"]
    # The race really ran: some leases were swept from under their holders.
    assert c.totals["redelivered_total"] > 0 and len(stale) == c.totals["redelivered_total"]


def ack_while_held(queue: Queue, receipts: list[str], hold: Callable[[], Any], riding: bool) -> broker.ReceiptResult:
    """Ack ``receipts`` (riding on a receive, or not) while another
    connection's transaction, which ran ``hold``, has changed their rows and
    not committed: the ack is seen waiting for that transaction's row locks,
    then the transaction commits. Returns the ack's verdicts."""
    holding, release = threading.Event(), threading.Event()
    verdicts: list[broker.ReceiptResult] = []

    def work(i: int) -> None:
        if i == 0:
            with transaction.atomic():
                hold()
                holding.set()
                release.wait(DEADLINE_SECONDS)
            return
        holding.wait(DEADLINE_SECONDS)
        verdicts.append(lease_and_ack(riding)(queue, receipts, 1)[1])

    def ack_waits() -> bool:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%%mq_ack(%%'"
            )
            return bool(cur.fetchone()[0])

    def watch() -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not ack_waits() and time.monotonic() < deadline:
            time.sleep(0.005)
        release.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    errors = run_threads(2, work)
    watcher.join()
    assert errors == [] and len(verdicts) == 1
    return verdicts[0]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and waits are PostgreSQL's")
@pytest.mark.parametrize("riding", [False, True], ids=["ack", "ack_riding_on_receive"])
def test_an_old_receipt_acked_while_its_message_is_leased_again_deletes_nothing(transactional_db, riding):
    """A consumer's leases ran out; its acks arrive while the sweep gives the
    messages back and another consumer claims them, all in one transaction
    not yet committed. The ack's snapshot still shows the old tokens, so its
    delete waits for that transaction, then checks each row again on its
    newest version: the new consumer's token, no match, nothing deleted."""
    broker.put_queue("relet", {"visibility_timeout": 30, "max_deliveries": 0})
    queue = broker.get_queue("relet")
    ids = fill(queue, 3)
    old = broker.receive(queue, max_messages=3)
    relet: list[broker.Delivery] = []

    def sweep_and_claim() -> None:
        maintenance.expire_leases(now=time.time() + 60)
        relet.extend(broker.receive(queue, max_messages=3))

    result = ack_while_held(queue, [d.receipt for d in old], sweep_and_claim, riding)
    assert result.done == [] and sorted(result.stale) == sorted(d.receipt for d in old)
    assert sorted(d.id for d in relet) == sorted(ids)
    assert Message.objects.filter(queue=queue, state="in_flight").count() == 3
    assert sorted(int(m) for m in broker.ack(queue, [d.receipt for d in relet]).done) == sorted(ids)
    assert_counters_match(queue, sent_total=3, received_total=6, redelivered_total=3, acked_total=3)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and waits are PostgreSQL's")
@pytest.mark.parametrize("riding", [False, True], ids=["ack", "ack_riding_on_receive"])
def test_an_ack_waiting_for_its_own_extend_deletes_after_it(transactional_db, riding):
    """The other side of the recheck: an extend changes the rows but keeps
    their tokens, so the ack that waited for it still deletes them all."""
    broker.put_queue("kept", {"visibility_timeout": 30})
    queue = broker.get_queue("kept")
    ids = fill(queue, 3)
    held = [d.receipt for d in broker.receive(queue, max_messages=3)]
    result = ack_while_held(queue, held, lambda: broker.extend(queue, held, 60), riding)
    assert sorted(int(m) for m in result.done) == sorted(ids) and result.stale == []
    assert not Message.objects.filter(queue=queue).exists()
    assert_counters_match(queue, sent_total=3, received_total=3, acked_total=3)


def test_concurrent_producers_with_one_dedup_id_enqueue_exactly_one(transactional_db):
    n_producers, rounds = 6, 15
    broker.put_queue("dedup", {})
    queue = broker.get_queue("dedup")
    results: dict[str, list[broker.Published]] = defaultdict(list)
    lock = threading.Lock()
    barrier = threading.Barrier(n_producers)

    def produce(i: int) -> None:
        for r in range(rounds):
            barrier.wait(DEADLINE_SECONDS)
            (res,) = broker.publish(queue, [broker.NewMessage(body=orjson.dumps(i), dedup_id=f"key-{r}")])
            with lock:
                results[f"key-{r}"].append(res)

    assert run_threads(n_producers, produce) == []
    assert Message.objects.filter(queue=queue).count() == rounds
    for r in range(rounds):
        key = f"key-{r}"
        (stored,) = Message.objects.filter(queue=queue, dedup_id=key).values_list("id", flat=True)
        assert len(results[key]) == n_producers
        assert {p.id for p in results[key]} == {str(stored)}
        assert sorted(p.duplicate for p in results[key]) == [False] + [True] * (n_producers - 1)
    assert_counters_match(queue, sent_total=rounds)


def test_concurrent_updates_never_close_a_dead_letter_cycle_between_them(transactional_db):
    """a -> b and b -> a at once (and a three-queue ring): each check alone
    sees no loop, so only the chain's locks keep the second from closing it."""
    from queues.exceptions import InvalidValue

    rounds = 10
    for r in range(rounds):
        for name in ("a", "b", "c"):
            broker.put_queue(f"{name}{r}", {})
    barrier = threading.Barrier(3)
    refused: Counter[int] = Counter()
    lock = threading.Lock()

    def link(i: int) -> None:
        for r in range(rounds):
            names = [f"a{r}", f"b{r}", f"c{r}"]
            barrier.wait(DEADLINE_SECONDS)
            try:
                broker.put_queue(names[i], {"dead_letter_queue": names[(i + 1) % 3]})
            except InvalidValue as exc:
                assert str(exc).startswith("dead-letter cycle: ")
                with lock:
                    refused[r] += 1

    assert run_threads(3, link) == []
    for r in range(rounds):
        assert refused[r] == 1  # two links made, the one that would close the ring refused
        links = dict(Queue.objects.filter(name__endswith=str(r)).values_list("name", "dead_letter_queue__name"))
        assert sum(v is not None for v in links.values()) == 2


def test_fifo_queue_drained_by_threads_keeps_one_per_group_in_order(transactional_db):
    n_groups, per_group, n_workers = 6, 40, 4
    broker.put_queue("fifo", {"fifo": True, "visibility_timeout": 300})
    queue = broker.get_queue("fifo")
    expected: dict[str, list[int]] = defaultdict(list)
    for k in range(per_group):
        batch = [broker.NewMessage(body=orjson.dumps([g, k]), group=f"g{g}") for g in range(n_groups)]
        for g, res in enumerate(broker.publish(queue, batch)):
            expected[f"g{g}"].append(int(res.id))
    holding: dict[str, int] = {}  # group -> message id some worker holds
    violations: list[str] = []
    delivered: dict[str, list[int]] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_SECONDS
    total = n_groups * per_group
    acked = [0]

    def consume(i: int) -> None:
        while time.monotonic() < deadline:
            with lock:
                if acked[0] >= total:
                    return
            got = broker.receive(queue, max_messages=4)
            if not got:
                time.sleep(0.005)
                continue
            with lock:
                for d in got:
                    if d.group in holding:
                        violations.append(f"{d.group}: {d.id} while {holding[d.group]} in flight")
                    holding[d.group] = d.id
                    delivered[d.group].append(d.id)
            time.sleep(0.001)  # hold the lease a moment so overlaps would show
            with lock:
                # Let go before the ack commits: a violation can then only
                # be reported when the broker really leased two at once.
                for d in got:
                    holding.pop(d.group, None)
            result = broker.ack(queue, [d.receipt for d in got])
            assert result.stale == []
            with lock:
                acked[0] += len(result.done)

    assert run_threads(n_workers, consume) == []
    assert violations == []
    assert dict(delivered) == dict(expected)  # each group in enqueue order, each once
    assert Message.objects.filter(queue=queue).count() == 0
    assert_counters_match(queue, acked_total=total)


@pytest.mark.parametrize("n_workers", [3])
def test_consumers_drain_through_the_api(transactional_db, n_workers):
    from queues.api.auth import forget

    forget()
    raw = make_token()
    admin = Api(raw)
    admin.make_queue("http", visibility_timeout=300)
    n_messages = 600
    for start in range(0, n_messages, 200):
        admin.send("http", *range(start, start + 200))
    bodies: list[list[int]] = [[] for _ in range(n_workers)]

    def consume(i: int) -> None:
        client = Api(raw)
        empty = 0
        while empty < 3:
            got = client.receive("http", max=20)
            if not got:
                empty += 1
                continue
            empty = 0
            result = client.ack("http", *[m["receipt"] for m in got])
            assert result["stale"] == []
            bodies[i] += [m["body"] for m in got]

    assert run_threads(n_workers, consume) == []
    all_bodies = [b for per in bodies for b in per]
    assert sorted(all_bodies) == list(range(n_messages))
    counts = admin.counts("http")
    assert (counts["ready"], counts["in_flight"], counts["delayed"]) == (0, 0, 0)
    assert_counters_match(broker.get_queue("http"), received_total=n_messages, acked_total=n_messages)


def test_purge_racing_consumers_keeps_counters_exact(transactional_db):
    """Purges while consumers receive and ack: whatever each purge actually
    deleted is what the counters lose, never a message in a state it no
    longer had."""
    broker.put_queue("purged", {"visibility_timeout": 300})
    queue = broker.get_queue("purged")
    stop = threading.Event()
    deadline = time.monotonic() + 2.5

    def work(i: int) -> None:
        if i == 0:  # producer
            while time.monotonic() < deadline:
                fill(queue, 50)
            stop.set()
        elif i == 1:  # purger
            while not stop.is_set():
                broker.purge(queue)
                time.sleep(0.002)
        else:  # consumers
            while not stop.is_set():
                got = broker.receive(queue, max_messages=10)
                if got:
                    broker.ack(queue, [d.receipt for d in got[::2]])
                    broker.nack(queue, [d.receipt for d in got[1::2]])

    assert run_threads(4, work) == []
    assert_counters_match(queue)
    c = broker.queue_counts([queue.id])[queue.id]
    real = Counter(Message.objects.filter(queue=queue).values_list("state", flat=True))
    assert c.ready == real["ready"] and c.in_flight == real["in_flight"]
    t = c.totals
    # Every message sent is accounted for: acked, purged, or still here.
    assert t["sent_total"] == t["acked_total"] + t["purged_total"] + sum(real.values())


def test_counts_read_while_the_monitor_folds_never_go_backwards(transactional_db):
    """Only sends happen, so a queue's ready count can only grow: a read that
    raced a fold must not miss the deltas being folded (nor count them twice)."""
    broker.put_queue("growing", {})
    queue = broker.get_queue("growing")
    stop = threading.Event()
    deadline = time.monotonic() + 2
    readings: list[int] = []

    def work(i: int) -> None:
        if i == 0:
            while time.monotonic() < deadline:
                broker.publish(queue, [broker.NewMessage(body=b"1")])
            stop.set()
        elif i == 1:
            while not stop.is_set():
                broker.fold_stats()
        else:
            while not stop.is_set():
                readings.append(broker.queue_counts([queue.id])[queue.id].ready)

    assert run_threads(3, work) == []
    drops = [(a, b) for a, b in pairwise(readings) if b < a]
    assert drops == []
    sent = Message.objects.filter(queue=queue).count()
    assert max(readings) <= sent
    assert_counters_match(queue, sent_total=sent)


def test_concurrent_nacks_dead_letter_every_poison_message_and_nothing_else(transactional_db):
    n_messages, n_workers = 1500, 4
    broker.put_queue("poison.dlq", {})
    broker.put_queue("poison", {"max_deliveries": 2, "dead_letter_queue": "poison.dlq", "visibility_timeout": 300})
    queue, dlq = broker.get_queue("poison"), broker.get_queue("poison.dlq")
    ids = fill(queue, n_messages)
    poison = {mid for i, mid in enumerate(ids) if i % 3 == 0}
    acked: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_SECONDS

    def consume(i: int) -> None:
        empty = 0
        while empty < 3 and time.monotonic() < deadline:
            got = broker.receive(queue, max_messages=10)
            if not got:
                empty += 1
                time.sleep(0.01)
                continue
            empty = 0
            bad = [d.receipt for d in got if orjson.loads(d.body) % 3 == 0]
            good = [d.receipt for d in got if orjson.loads(d.body) % 3 != 0]
            if bad:
                assert broker.nack(queue, bad, reason="poison").stale == []
            if good:
                result = broker.ack(queue, good)
                assert result.stale == []
                with lock:
                    acked.extend(int(m) for m in result.done)

    assert run_threads(n_workers, consume) == []
    assert sorted(acked) == sorted(set(ids) - poison)
    assert set(Message.objects.filter(queue=dlq).values_list("id", flat=True)) == poison
    assert Message.objects.filter(queue=queue).count() == 0
    assert_counters_match(queue, dead_lettered_total=len(poison), acked_total=n_messages - len(poison))
    assert_counters_match(dlq)
    assert broker.queue_counts([queue.id])[queue.id].dead == len(poison)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and waits are PostgreSQL's")
@pytest.mark.parametrize("first", ["send", "delete"])
def test_a_send_racing_the_delete_of_its_queue_leaves_no_message_behind(transactional_db, first):
    """Messages have no foreign-key constraint on their queue. A send holds
    the queue's row until it commits, so the delete waits for it and then
    deletes what it sent; a send that comes second waits for the delete and
    finds the queue gone."""
    broker.put_queue("doomed", {})
    queue = broker.get_queue("doomed")
    holding, go = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            with transaction.atomic():
                broker.publish(queue, [broker.NewMessage(body=b"1"), broker.NewMessage(body=b"2")])
                if first == "send":
                    holding.set()
                    go.wait(DEADLINE_SECONDS)
            outcome["send"] = "sent"
        except QueueNotFound:
            outcome["send"] = "queue gone"

    def delete() -> None:
        with transaction.atomic():
            broker.delete_queue(Queue.objects.get(pk=queue.pk))
            if first == "delete":
                holding.set()
                go.wait(DEADLINE_SECONDS)
        outcome["delete"] = "deleted"

    def both(i: int) -> None:
        if i == 0:
            (send if first == "send" else delete)()
            return
        assert holding.wait(DEADLINE_SECONDS)
        racer = threading.Thread(target=run_threads, args=(1, lambda _i: (delete if first == "send" else send)()))
        racer.start()
        racer.join(0.5)
        # The second cannot finish while the first holds the queue.
        outcome["blocked"] = racer.is_alive()
        go.set()
        racer.join(DEADLINE_SECONDS)

    assert run_threads(2, both) == []
    assert outcome == {"send": "sent" if first == "send" else "queue gone", "delete": "deleted", "blocked": True}
    assert not Queue.objects.filter(name="doomed").exists()
    assert not Message.objects.filter(queue_id=queue.pk).exists()
