"""Consistent (rendezvous) hashing of FIFO groups, by slot, over a queue's
live consumers: each group has one owner while it lives; when a consumer
dies only its groups move."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings
from django.db import connection

from queues import broker, events, hashing, health
from queues.models import Consumer, Message

GROUPS = [f"customer-{i}" for i in range(30)]


@pytest.fixture(autouse=True)
def _forget_events():
    """Events these tests cause stay in the process-wide buffer otherwise,
    where the next test module's dashboard would see them."""
    yield
    events.drain()


def test_removing_a_consumer_moves_only_its_groups():
    three = ["a", "b", "c"]
    before = {g: hashing.group_owner(g, three) for g in GROUPS}
    after = {g: hashing.group_owner(g, ["a", "b"]) for g in GROUPS}
    assert set(before.values()) == {"a", "b", "c"}  # spread over all three
    for g in GROUPS:
        if before[g] != "c":
            assert after[g] == before[g]
        else:
            assert after[g] in ("a", "b")


def test_adding_a_consumer_moves_only_the_groups_it_now_wins():
    before = {g: hashing.group_owner(g, ["a", "b"]) for g in GROUPS}
    after = {g: hashing.group_owner(g, ["a", "b", "d"]) for g in GROUPS}
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

    owner3 = {g: hashing.group_owner(g, [a, b, c]) for g in GROUPS}
    owner2 = {g: hashing.group_owner(g, [a, b]) for g in GROUPS}
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


# ------------------------------------------------------------------ slots --

CROWD = [f"consumer-{i:03d}" for i in range(200)]


def test_slots_spread_over_every_consumer_of_a_crowd():
    owners = hashing.Assignment.compute(frozenset(CROWD)).owners
    per_consumer = {c: owners.count(c) for c in CROWD}
    assert min(per_consumer.values()) > 0
    assert max(per_consumer.values()) < 3 * hashing.SLOTS / len(CROWD)


def test_a_consumers_death_moves_only_its_own_slots_each_to_its_runner_up():
    before = hashing.Assignment.compute(frozenset(CROWD))
    dead = CROWD[17]
    after = hashing.Assignment.compute(frozenset(CROWD) - {dead})
    moved = [s for s in range(hashing.SLOTS) if before.owners[s] != after.owners[s]]
    assert moved == before.slots(dead)
    for s in moved:
        runner_up = sorted((c for c in CROWD if c != dead), key=lambda c: -hashing.weight(c, s))[0]
        assert after.owners[s] == runner_up


def test_a_join_takes_only_the_slots_it_now_wins():
    before = hashing.Assignment.compute(frozenset(CROWD))
    after = hashing.Assignment.compute(frozenset(CROWD) | {"newcomer"})
    moved = {s for s in range(hashing.SLOTS) if before.owners[s] != after.owners[s]}
    assert moved == set(after.slots("newcomer"))
    assert 0 < len(moved) < 3 * hashing.SLOTS / len(CROWD)


def test_an_assignment_derived_from_another_is_the_one_computed_from_scratch():
    crowd = frozenset(CROWD)
    base = hashing.Assignment.compute(crowd)
    for changed in (crowd - {CROWD[3]}, crowd | {"x", "y"}, (crowd - {CROWD[5], CROWD[150]}) | {"z"}, frozenset({"only"}), frozenset()):
        assert base.derive(changed).owners == hashing.Assignment.compute(changed).owners


def test_two_processes_compute_the_same_owners():
    script = (
        "import json, sys; from queues import hashing; "
        "ids = json.loads(sys.stdin.read()); print(json.dumps(hashing.Assignment.compute(frozenset(ids)).owners))"
    )
    env = dict(os.environ, PYTHONHASHSEED="random")
    other = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        input=json.dumps(CROWD[:50]), capture_output=True, text=True, check=True, env=env, cwd=settings.BASE_DIR,
    )
    assert json.loads(other.stdout) == hashing.Assignment.compute(frozenset(CROWD[:50])).owners


def test_a_groups_slot_is_fixed_at_send(api):
    api.make_queue("orders", fifo=True)
    api.send("orders", "x", group="customer-7")
    api.send("orders", "y")
    slots = dict(Message.objects.values_list("group_key", "group_slot"))
    assert slots == {"customer-7": hashing.slot_of("customer-7"), "": hashing.UNGROUPED}
    api.make_queue("plain")
    api.send("plain", "z")
    assert Message.objects.get(queue__name="plain").group_slot is None


def test_the_migration_gives_stored_messages_the_slots_a_send_gives(api):
    api.make_queue("orders", fifo=True)
    api.make_queue("plain")
    groups = ["customer-17", "naïve ☕ group", "x" * 128, "0"]
    for g in groups:
        api.send("orders", g, group=g)
    api.send("orders", "no group")
    api.send("plain", "no group either")
    Message.objects.update(group_slot=None)
    migration = importlib.import_module("queues.migrations.0011_message_group_slot")
    migration.backfill(connection)
    stored = {(q, g): s for q, g, s in Message.objects.values_list("queue__name", "group_key", "group_slot")}
    assert stored == {
        **{("orders", g): hashing.slot_of(g) for g in groups},
        ("orders", ""): hashing.UNGROUPED,
        ("plain", ""): None,
    }


def test_a_queue_made_fifo_makes_its_ungrouped_messages_everyones(api):
    api.make_queue("jobs")
    api.make_queue("dlq", fifo=True)
    api.send("jobs", "sent before")
    api.make_queue("jobs", fifo=True)
    assert Message.objects.get().group_slot == hashing.UNGROUPED
    # A message moved into a FIFO queue (dead-lettered, here) too.
    api.make_queue("other", dead_letter_queue="dlq", max_deliveries=1)
    api.send("other", "doomed")
    broker.nack(broker.get_queue("other"), [api.receive("other")[0]["receipt"]])
    assert Message.objects.get(body='"doomed"').group_slot == hashing.UNGROUPED


@pytest.mark.parametrize("crowd", [3, 40], ids=["many-slots-each", "few-slots-each"])
def test_each_consumer_of_a_crowd_receives_only_its_groups_and_everyones_ungrouped(api, crowd):
    # 40 consumers own ~100 slots each: on PostgreSQL the claim probes each
    # slot; 3 own ~1,400: it filters the queue's rows.
    api.make_queue("orders", fifo=True, visibility_timeout=3600)
    ids = sorted(broker.register_consumer(f"w{i}", ["orders"], {}, 60).pk for i in range(crowd))
    groups = [f"customer-{i}" for i in range(120)]
    api.post("queues/orders/messages", {"messages": [{"body": g, "group": g} for g in groups]})
    api.send("orders", "anyone's", "anyone's too")
    queue = broker.get_queue("orders")
    got: dict[str, list[str]] = {}
    for cid in ids:
        got[cid] = [d.group for d in broker.receive(queue, max_messages=100, consumer_id=cid)]
    for cid in ids:
        mine = sorted(g for g in groups if hashing.group_owner(g, ids) == cid)
        assert sorted(g for g in got[cid] if g) == mine
    # The ungrouped went to whoever asked first.
    assert got[ids[0]].count("") == 2


def test_order_within_a_group_survives_its_slot_changing_hands(api):
    api.make_queue("orders", fifo=True, visibility_timeout=3600)
    queue = broker.get_queue("orders")
    first = broker.register_consumer("first", ["orders"], {}, 60).pk
    # A group the newcomer will win from the first consumer.
    newcomer_id = next(f"n{i}" for i in range(1000) if hashing.group_owner("g", [first, f"n{i}"]) == f"n{i}")
    api.post("queues/orders/messages", {"messages": [{"body": i, "group": "g"} for i in range(3)]})
    held = broker.receive(queue, max_messages=10, consumer_id=first)
    assert [d.body for d in held] == ["0"]
    Consumer.objects.create(id=newcomer_id, name="newcomer", queues=["orders"])
    # The group is the newcomer's now, but its head is still in flight at
    # the first consumer: nothing for either until that one is acked.
    assert broker.receive(queue, max_messages=10, consumer_id=newcomer_id) == []
    assert broker.receive(queue, max_messages=10, consumer_id=first) == []
    broker.ack(queue, [held[0].receipt])
    assert broker.receive(queue, max_messages=10, consumer_id=first) == []
    after = broker.receive(queue, max_messages=10, consumer_id=newcomer_id)
    assert [d.body for d in after] == ["1"]
    broker.ack(queue, [after[0].receipt])
    assert [d.body for d in broker.receive(queue, max_messages=10, consumer_id=newcomer_id)] == ["2"]
