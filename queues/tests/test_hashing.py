"""Consistent (rendezvous) hashing of FIFO groups over a queue's live
consumers: each group has one owner while it lives; when a consumer dies only
its groups move."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from queues import broker, events, hashing, health
from queues.models import Consumer

GROUPS = [f"customer-{i}" for i in range(30)]


@pytest.fixture(autouse=True)
def _forget_events():
    """Events these tests cause stay in the process-wide buffer otherwise,
    where the next test module's dashboard would see them."""
    yield
    events.drain()


def test_sql_weight_is_the_python_weight(db):
    cases = [("a1b2", "g"), ("0f" * 16, "customer-17"), ("x_y-z", "naïve ☕ group"), ("c", "")]
    for consumer_id, group in cases:
        with connection.cursor() as cur:
            cur.execute(f"SELECT {hashing._weight_sql('%s')}", [hashing._key(consumer_id), group])
            (value,) = cur.fetchone()
        assert value == hashing.weight(consumer_id, group)


def test_removing_a_consumer_moves_only_its_groups():
    three = ["a", "b", "c"]
    before = {g: hashing.owner(g, three) for g in GROUPS}
    after = {g: hashing.owner(g, ["a", "b"]) for g in GROUPS}
    assert set(before.values()) == {"a", "b", "c"}  # spread over all three
    for g in GROUPS:
        if before[g] != "c":
            assert after[g] == before[g]
        else:
            assert after[g] in ("a", "b")


def test_adding_a_consumer_moves_only_the_groups_it_now_wins():
    before = {g: hashing.owner(g, ["a", "b"]) for g in GROUPS}
    after = {g: hashing.owner(g, ["a", "b", "d"]) for g in GROUPS}
    moved = {g for g in GROUPS if after[g] != before[g]}
    assert moved and all(after[g] == "d" for g in moved)


def test_receive_without_consumer_ignores_ownership(api):
    api.make_queue("orders", fifo=True)
    a = broker.register_consumer("a", ["orders"], {}, 30)
    broker.register_consumer("b", ["orders"], {}, 30)
    for g in GROUPS[:6]:
        api.send("orders", g, group=g)
    assert len(api.receive("orders", max=10)) == 6
    assert a.pk  # the registered consumers did not matter


def test_three_consumers_thirty_groups_one_dies_only_its_groups_move(tapi):
    tapi.make_queue("orders", fifo=True, visibility_timeout=3600)
    queue = broker.get_queue("orders")
    a, b, c = (broker.register_consumer(n, ["orders"], {}, 60).pk for n in ("a", "b", "c"))
    per_group = 4
    for i in range(per_group):
        # Interleaved, as customers would order.
        tapi.post("queues/orders/messages", {"messages": [{"body": [g, i], "group": g} for g in GROUPS]})
    total = per_group * len(GROUPS)

    lock = threading.Lock()
    in_flight_at: dict[str, str] = {}  # group -> consumer holding it now
    violations: list[str] = []
    deliveries: list[tuple[int, str, str, int]] = []  # phase, group, consumer, message id
    acked = [0]
    phase = [1]
    crash = threading.Event()
    held_by_c: list[broker.Delivery] = []
    pause = threading.Event()
    paused = {a: threading.Event(), b: threading.Event()}
    errors: list[BaseException] = []

    def consume(cid: str) -> None:
        try:
            while acked[0] < total and not (cid == c and held_by_c):
                if cid in paused:
                    while pause.is_set():
                        paused[cid].set()
                        time.sleep(0.01)
                    paused[cid].clear()
                got = broker.receive(queue, max_messages=5, consumer_id=cid)
                if not got:
                    time.sleep(0.01)
                    continue
                with lock:
                    for d in got:
                        if d.group in in_flight_at:
                            violations.append(f"{d.group} in flight at {in_flight_at[d.group]} and {cid}")
                        in_flight_at[d.group] = cid
                        deliveries.append((phase[0], d.group, cid, d.id))
                if cid == c and crash.is_set():
                    held_by_c.extend(got)  # dies holding them: no ack, no more beats
                    return
                time.sleep(0.002)
                with lock:
                    for d in got:
                        del in_flight_at[d.group]
                broker.ack(queue, [d.receipt for d in got])
                with lock:
                    acked[0] += len(got)
                if cid == c:
                    # c dies with its next delivery: each of its groups still
                    # has later messages waiting (one per group per receive).
                    crash.set()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = {cid: threading.Thread(target=consume, args=(cid,)) for cid in (a, b, c)}
    for t in threads.values():
        t.start()
    threads[c].join(30)
    assert held_by_c, "c should have died holding messages"

    # c is silent past its timeout: the monitor's pass declares it dead and
    # releases what it held. a and b pause meanwhile, so the hand-over is
    # observed cleanly.
    pause.set()
    assert all(e.wait(10) for e in paused.values())
    Consumer.objects.filter(pk=c).update(last_heartbeat=time.time() - 120)
    assert health.check_consumers()["released"] == len(held_by_c)
    with lock:
        for d in held_by_c:
            del in_flight_at[d.group]
        phase[0] = 2
    pause.clear()
    for cid in (a, b):
        threads[cid].join(60)
    assert not errors, errors
    assert not violations, violations[:5]

    owner3 = {g: hashing.owner(g, [a, b, c]) for g in GROUPS}
    owner2 = {g: hashing.owner(g, [a, b]) for g in GROUPS}
    for ph, group, cid, _mid in deliveries:
        assert cid == (owner3 if ph == 1 else owner2)[group], (ph, group, cid)
    # Only c's groups changed hands; everyone else's stayed where they were.
    moved = {g for ph, g, cid, _ in deliveries if ph == 2 and cid != owner3[g]}
    assert moved and moved <= {g for g in GROUPS if owner3[g] == c}
    # What c held was delivered again, to the new owner of its group.
    for d in held_by_c:
        again = [cid for ph, g, cid, mid in deliveries if mid == d.id and ph == 2]
        assert again == [owner2[d.group]]
    # Every message was handled; each group in enqueue order.
    assert acked[0] == total
    broker.fold_stats()
    counts = tapi.counts("orders")
    assert (counts["ready"], counts["in_flight"]) == (0, 0)
    for g in GROUPS:
        ids = [mid for _ph, grp, _cid, mid in deliveries if grp == g]
        assert ids == sorted(ids)
