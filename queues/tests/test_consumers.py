"""Consumers: registration, heartbeats, the monitor's health pass (alive ->
suspect -> dead) and crash recovery, in process against the real database."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from queues import broker, events, hashing, health, monitor
from queues.models import Consumer, ConsumerStatus, Message
from queues.states import MessageState


@pytest.fixture(autouse=True)
def _forget_events():
    """Events these tests cause stay in the process-wide buffer otherwise,
    where the next test module's dashboard would see them."""
    yield
    events.drain()


def register(api, name: str = "w1", queues=("jobs",), timeout: int | None = 6) -> dict:
    body = {"name": name, "queues": list(queues)}
    if timeout is not None:
        body["heartbeat_timeout"] = timeout
    r = api.post("consumers", body)
    assert r.status_code == 201, r.content
    return r.data


def consumer_row(api, cid: str) -> dict:
    return next(c for c in api.get("consumers").data["consumers"] if c["id"] == cid)


def test_register_answers_id_interval_and_timeout(api):
    api.make_queue("jobs")
    data = register(api, timeout=6)
    assert data["heartbeat_timeout"] == 6
    assert data["heartbeat_interval"] == 2.0  # a third of the timeout: three chances
    row = consumer_row(api, data["id"])
    assert row["status"] == "alive" and row["queues"] == ["jobs"] and row["in_flight"] == 0


def test_register_for_a_missing_queue_is_404(api):
    r = api.post("consumers", {"name": "w", "queues": ["nope"]})
    assert r.status_code == 404 and r.data["error"]["code"] == "queue_not_found"


def test_receive_with_consumer_records_the_holder(api):
    api.make_queue("jobs")
    api.send("jobs", 1, 2, 3)
    cid = register(api)["id"]
    api.receive("jobs", max=2, consumer=cid)
    assert consumer_row(api, cid)["in_flight"] == 2


def test_receive_for_unknown_consumer_is_404(api):
    api.make_queue("jobs")
    r = api.post("queues/jobs/receive", {"consumer": "nobody"})
    assert r.status_code == 404 and r.data["error"]["code"] == "consumer_not_found"


def test_one_missed_interval_makes_suspect_and_a_beat_makes_alive_again(api):
    api.make_queue("jobs")
    cid = register(api, timeout=6)["id"]  # interval 2 s
    beat = Consumer.objects.get(pk=cid).last_heartbeat
    health.check_consumers(now=beat + 2.5)  # within one interval plus grace
    assert consumer_row(api, cid)["status"] == "alive"
    health.check_consumers(now=beat + 3.5)  # a beat is missing
    assert consumer_row(api, cid)["status"] == "suspect"
    assert api.post(f"consumers/{cid}/heartbeat").status_code == 200
    assert consumer_row(api, cid)["status"] == "alive"


def test_a_health_pass_over_healthy_consumers_is_one_query(api):
    # It runs four times a second: with nothing late, dead or to forget,
    # one query answers, and the suspect cutoff is the pass's own (the
    # timeout's third, plus grace).
    from django.test.utils import CaptureQueriesContext

    api.make_queue("jobs")
    cid = register(api, timeout=6)["id"]  # interval 2 s, suspect after 3 s
    beat = Consumer.objects.get(pk=cid).last_heartbeat
    with CaptureQueriesContext(connection) as queries:
        assert health.check_consumers(now=beat + 2.9) == {"suspect": 0, "dead": 0, "released": 0}
    assert len(queries) == 1
    assert health.check_consumers(now=beat + 3.1)["suspect"] == 1


def test_suspect_consumer_keeps_its_leases(api):
    api.make_queue("jobs")
    api.send("jobs", "a")
    cid = register(api, timeout=6)["id"]
    api.receive("jobs", consumer=cid)
    beat = Consumer.objects.get(pk=cid).last_heartbeat
    done = health.check_consumers(now=beat + 5)
    assert done["suspect"] == 1 and done["dead"] == 0
    assert api.counts("jobs")["in_flight"] == 1


def test_silent_consumer_is_declared_dead_and_its_messages_return_at_once(api, django_capture_on_commit_callbacks):
    api.make_queue("jobs", visibility_timeout=3600)
    api.send("jobs", "a", "b", "c")
    cid = register(api, timeout=6)["id"]
    held = api.receive("jobs", max=2, consumer=cid)
    beat = Consumer.objects.get(pk=cid).last_heartbeat
    events.drain()
    with django_capture_on_commit_callbacks(execute=True):
        done = health.check_consumers(now=beat + 6.1)
    assert done == {"suspect": 1, "dead": 1, "released": 2}
    # Back to ready long before the one-hour visibility timeout.
    counts = api.counts("jobs")
    assert (counts["ready"], counts["in_flight"]) == (3, 0)
    announced = events.drain()
    redelivered = sorted(e["message"] for e in announced if e["kind"] == "redelivery")
    assert redelivered == sorted(m["id"] for m in held)
    deaths = [e for e in announced if e["kind"] == "consumer_dead"]
    assert len(deaths) == 1 and deaths[0]["consumer"] == cid and deaths[0]["released"] == 2
    # Redelivered messages go to the next receiver, counted as a second delivery.
    again = api.receive("jobs", max=3)
    assert sorted(m["delivery_count"] for m in again) == [1, 2, 2]


def test_heartbeat_after_death_is_410_consumer_dead(api):
    api.make_queue("jobs")
    cid = register(api, timeout=2)["id"]
    health.check_consumers(now=Consumer.objects.get(pk=cid).last_heartbeat + 3)
    r = api.post(f"consumers/{cid}/heartbeat")
    assert r.status_code == 410 and r.data["error"]["code"] == "consumer_dead"
    r = api.post("queues/jobs/receive", {"consumer": cid})
    assert r.status_code == 410
    assert consumer_row(api, cid)["status"] == "dead"


def test_heartbeat_for_unknown_consumer_is_404(api):
    r = api.post("consumers/nobody/heartbeat")
    assert r.status_code == 404 and r.data["error"]["code"] == "consumer_not_found"


def test_a_beat_that_lands_first_wins_over_the_death_sentence(api):
    api.make_queue("jobs")
    cid = register(api, timeout=2)["id"]
    stale_view = Consumer.objects.get(pk=cid)  # what the monitor read
    later = stale_view.last_heartbeat + 3
    broker.heartbeat(cid, now=later)  # the beat commits first
    assert health.declare_dead(stale_view, now=later + 0.5) is None
    assert Consumer.objects.get(pk=cid).status == ConsumerStatus.ALIVE


def test_graceful_leave_releases_at_once(api):
    api.make_queue("jobs", visibility_timeout=3600)
    api.send("jobs", "a", "b")
    cid = register(api)["id"]
    api.receive("jobs", max=2, consumer=cid)
    r = api.delete(f"consumers/{cid}")
    assert r.status_code == 200 and r.data == {"released": 2}
    assert api.counts("jobs")["ready"] == 2
    assert consumer_row(api, cid)["status"] == "left"


def test_a_consumer_that_left_is_not_counted_dead(api):
    # Leaving is not crashing: its own status, and its time of leaving.
    api.make_queue("jobs")
    cid = register(api)["id"]
    assert api.delete(f"consumers/{cid}").status_code == 200
    row = consumer_row(api, cid)
    assert row["status"] == "left" and row["dead_at"] is not None
    assert Consumer.objects.get(pk=cid).status == ConsumerStatus.LEFT


def test_heartbeat_after_leave_is_410_consumer_dead(api):
    api.make_queue("jobs")
    cid = register(api)["id"]
    api.delete(f"consumers/{cid}")
    r = api.post(f"consumers/{cid}/heartbeat")
    assert r.status_code == 410 and r.data["error"]["code"] == "consumer_dead"
    assert "left" in r.data["error"]["message"]
    assert consumer_row(api, cid)["status"] == "left"


def test_a_receive_naming_a_consumer_that_left_is_refused(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    cid = register(api)["id"]
    api.delete(f"consumers/{cid}")
    r = api.post("queues/jobs/receive", {"consumer": cid})
    assert r.status_code == 410 and r.data["error"]["code"] == "consumer_dead"
    # Past the check (a receive already waiting when it left), the claim
    # itself takes nothing for it.
    assert broker.receive(broker.get_queue("jobs"), consumer_id=cid) == []
    assert api.counts("jobs")["ready"] == 1


def test_a_consumer_that_left_owns_no_fifo_groups(api):
    api.make_queue("jobs")
    stays = register(api, "w1")["id"]
    leaves = register(api, "w2")["id"]
    assert hashing.live_consumers("jobs") == sorted([stays, leaves])
    api.delete(f"consumers/{leaves}")
    assert hashing.live_consumers("jobs") == [stays]


def test_a_dead_consumer_that_leaves_stays_dead(api):
    api.make_queue("jobs")
    cid = register(api, timeout=2)["id"]
    died = Consumer.objects.get(pk=cid).last_heartbeat + 3
    health.check_consumers(now=died)
    assert api.delete(f"consumers/{cid}").status_code == 200
    consumer = Consumer.objects.get(pk=cid)
    assert (consumer.status, consumer.dead_at) == (ConsumerStatus.DEAD, died)


def test_gone_consumers_leave_the_live_list_after_the_forget_window(api, settings):
    settings.MQ_CONSUMER_FORGET_SECONDS = 60
    api.make_queue("jobs")
    alive = register(api, "w1")["id"]
    left = register(api, "w2")["id"]
    api.delete(f"consumers/{left}")
    listed = {c["id"] for c in api.get("consumers").data["consumers"]}
    assert listed == {alive, left}
    Consumer.objects.filter(pk=left).update(dead_at=time.time() - 61)
    assert {c["id"] for c in api.get("consumers").data["consumers"]} == {alive}
    # Still kept, and listed on request, until the monitor forgets it.
    assert {c["id"] for c in api.get("consumers?all=true").data["consumers"]} == {alive, left}


def test_a_claim_that_commits_after_the_death_is_swept_back(api):
    # A receive that was already waiting when the monitor declared its
    # consumer dead claims nothing (the claim shares a lock on the consumer
    # row, which the death sentence updates first). Should a lease to a dead
    # consumer exist anyway, the monitor's next pass sweeps it back.
    api.make_queue("jobs", visibility_timeout=3600)
    api.send("jobs", "late")
    cid = register(api, timeout=2)["id"]
    now = Consumer.objects.get(pk=cid).last_heartbeat + 3
    health.check_consumers(now=now)
    jobs = broker.get_queue("jobs")
    assert broker.receive(jobs, consumer_id=cid) == []
    assert api.counts("jobs")["ready"] == 1
    broker.receive(jobs)
    Message.objects.filter(state="in_flight").update(consumer_id=cid)  # the straggler
    assert api.counts("jobs")["in_flight"] == 1
    done = health.check_consumers(now=now + 0.25)
    assert done["released"] == 1
    assert api.counts("jobs")["ready"] == 1


def test_the_monitor_tick_runs_the_health_pass(api):
    assert health.check_consumers in monitor.TICK_HOOKS
    api.make_queue("jobs")
    cid = register(api, timeout=2)["id"]
    monitor.tick(Consumer.objects.get(pk=cid).last_heartbeat + 3)
    assert consumer_row(api, cid)["status"] == "dead"


def test_long_dead_consumers_are_forgotten(api):
    api.make_queue("jobs")
    cid = register(api, timeout=2)["id"]
    beat = Consumer.objects.get(pk=cid).last_heartbeat
    health.check_consumers(now=beat + 3)
    health.check_consumers(now=beat + 3 + health.DEAD_CONSUMER_KEEP_SECONDS + 1)
    assert not Consumer.objects.filter(pk=cid).exists()


def test_long_gone_consumers_that_left_are_forgotten(api):
    api.make_queue("jobs")
    cid = register(api)["id"]
    api.delete(f"consumers/{cid}")
    left_at = Consumer.objects.get(pk=cid).dead_at
    health.check_consumers(now=left_at + health.DEAD_CONSUMER_KEEP_SECONDS + 1)
    assert not Consumer.objects.filter(pk=cid).exists()


def test_two_monitors_passing_at_once_release_each_message_once(tapi):
    """Two health passes race for the same dead consumers (as two monitors
    would if the lead changed mid-tick): every message goes back once."""
    tapi.make_queue("jobs", visibility_timeout=3600)
    tapi.send("jobs", *range(20))
    ids = [register(tapi, name=f"w{i}", timeout=2)["id"] for i in range(4)]
    for cid in ids:
        tapi.receive("jobs", max=5, consumer=cid)
    now = max(Consumer.objects.values_list("last_heartbeat", flat=True)) + 3
    results: list[dict] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def pass_() -> None:
        try:
            barrier.wait()
            results.append(health.check_consumers(now=now))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=pass_) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(r["dead"] for r in results) == 4
    assert sum(r["released"] for r in results) == 20
    assert Message.objects.filter(state=MessageState.READY, delivery_count=1).count() == 20
    broker.fold_stats()
    assert tapi.counts("jobs")["ready"] == 20 and tapi.counts("jobs")["in_flight"] == 0


@pytest.mark.parametrize("timeout", [1, 3601])
def test_heartbeat_timeout_outside_bounds_is_422(api, timeout):
    api.make_queue("jobs")
    r = api.post("consumers", {"name": "w", "queues": ["jobs"], "heartbeat_timeout": timeout})
    assert r.status_code == 422


def test_beat_keeps_a_consumer_alive_across_passes(api):
    api.make_queue("jobs")
    cid = register(api, timeout=2)["id"]
    for _ in range(3):
        broker.heartbeat(cid)
        health.check_consumers(now=time.time() + 0.5)
    assert consumer_row(api, cid)["status"] == "alive"
