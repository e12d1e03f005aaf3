"""The client's Worker, for real: against a live `mq serve` (API + monitor)
on the test database, with workers in threads and, where signals matter, in
processes of their own (`mq worker`)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from mqclient import Client, Worker

from queues.tests.workers import read_log, start_worker, stop, wait_for


def run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    return thread


def consumer_named(client: Client, name: str) -> dict:
    return next(c for c in client.consumers() if c["name"] == name)


def test_backoff_doubles_per_delivery_up_to_the_maximum():
    worker = Worker(Client("http://127.0.0.1:1", "t.x"), "q", print, backoff_base=1, backoff_max=30)
    assert [worker.backoff(n) for n in (1, 2, 3, 4, 5, 6, 20)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("streaming", [False, True], ids=["poll", "stream"])
def test_failing_handler_is_retried_with_exponential_backoff(client, streaming):
    client.put_queue("jobs", max_deliveries=10)
    client.send("jobs", "boom")
    attempts: list[tuple[float, int]] = []

    def handler(message):
        attempts.append((time.monotonic(), message.delivery_count))
        raise ValueError(f"attempt {message.delivery_count} failed")

    worker = Worker(client, "jobs", handler, backoff_base=1, poll_wait=1, stream=streaming)
    thread = run_in_thread(worker)
    wait_for(lambda: len(attempts) >= 3, timeout=20)
    worker.stop()
    thread.join(10)
    assert [count for _at, count in attempts[:3]] == [1, 2, 3]
    gaps = [attempts[i + 1][0] - attempts[i][0] for i in range(2)]
    # Each retry waited at least its backoff: 1 s, then 2 s.
    assert gaps[0] >= 1 - 0.05 and gaps[1] >= 2 - 0.05
    waiting = client.request("GET", "/queues/jobs/messages?state=delayed")["messages"]
    assert waiting and waiting[0]["last_error"] == "ValueError: attempt 3 failed"
    assert worker.stats["failed"] == 3 and worker.stats["processed"] == 0


@pytest.mark.parametrize("streaming", [False, True], ids=["poll", "stream"])
def test_long_handler_keeps_its_lease_and_is_not_delivered_twice(client, streaming):
    # The lease is 3 s, the work 5 s; a second worker waits for any message
    # whose lease runs out. Without extensions it would get this one. (The
    # worker extends with a third of the lease left: 1 s of slack for an
    # extend request on a loaded machine.)
    client.put_queue("slow", visibility_timeout=3)
    client.send("slow", "bake")
    handled: list[tuple[str, int]] = []

    def handler(message):
        handled.append((message.id, message.delivery_count))
        time.sleep(5)

    workers = [Worker(client, "slow", handler, name=f"w{i}", poll_wait=1, stream=streaming) for i in range(2)]
    threads = [run_in_thread(w) for w in workers]
    wait_for(lambda: sum(w.stats["processed"] for w in workers) == 1, timeout=20)
    time.sleep(0.5)  # a redelivery would have reached the idle worker by now
    for w in workers:
        w.stop()
    for t in threads:
        t.join(10)
    assert len(handled) == 1 and handled[0][1] == 1
    assert sum(w.stats["extended"] for w in workers) >= 2
    assert sum(w.stats["stale"] for w in workers) == 0
    counts = client.get_queue("slow")
    assert (counts["ready"], counts["in_flight"]) == (0, 0)


@pytest.mark.parametrize("streaming", [False, True], ids=["poll", "stream"])
def test_sigterm_finishes_started_work_hands_back_the_rest_and_leaves(client, server, token, tmp_path, streaming):
    client.put_queue("jobs", visibility_timeout=60)
    client.send_batch("jobs", [{"body": {"sleep": 2, "n": i}} for i in range(3)])
    log = tmp_path / "log"
    mode = ["--stream"] if streaming else []
    proc = start_worker(server, token, log, "--queue", "jobs", "--prefetch", "1", "--poll-wait", "1", *mode, name="w")
    try:
        wait_for(lambda: read_log(log), timeout=20)
        wait_for(lambda: consumer_named(client, "w")["in_flight"] == 2, timeout=5)  # one started, one waiting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop(proc)
    entries = read_log(log)
    started = [e.message for e in entries if e.event == "start"]
    assert len(started) == 1
    assert [e.message for e in entries if e.event == "done"] == started
    counts = client.get_queue("jobs")
    # The started message was finished and acked; the other two are ready for
    # other workers right away (one handed back, one never taken).
    assert (counts["ready"], counts["in_flight"]) == (2, 0)
    assert consumer_named(client, "w")["status"] == "left"


@pytest.mark.parametrize("streaming", [False, True], ids=["poll", "stream"])
def test_second_sigterm_releases_everything_and_exits(client, server, token, tmp_path, streaming):
    client.put_queue("jobs", visibility_timeout=60)
    client.send("jobs", {"sleep": 30})
    log = tmp_path / "log"
    mode = ["--stream"] if streaming else []
    proc = start_worker(server, token, log, "--queue", "jobs", "--poll-wait", "1", *mode, name="w")
    try:
        wait_for(lambda: read_log(log), timeout=20)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 1
    finally:
        stop(proc)
    assert [e.event for e in read_log(log)] == ["start"]
    counts = client.get_queue("jobs")
    # Back to ready at once, not after the 60 s lease.
    assert (counts["ready"], counts["in_flight"]) == (1, 0)
    assert consumer_named(client, "w")["status"] == "left"
    again = client.receive("jobs")
    assert again and again[0].delivery_count == 2


class CountingClient(Client):
    """Counts the acks a worker sends on their own and those riding on a receive."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = {"ack": 0, "ack_and_receive": 0}

    def ack(self, *args, **kwargs):
        self.calls["ack"] += 1
        return super().ack(*args, **kwargs)

    def ack_and_receive(self, *args, **kwargs):
        self.calls["ack_and_receive"] += 1
        return super().ack_and_receive(*args, **kwargs)


def test_worker_acks_ride_on_its_next_receive(client, server, token):
    # One handler, no prefetch: when it finishes, the fetcher is waiting for
    # its slot, so the ack goes with the next receive: one request a message.
    client.put_queue("rides")
    client.send_batch("rides", [{"body": i} for i in range(30)])
    counting = CountingClient(server, token)
    done: list[int] = []
    worker = Worker(counting, "rides", lambda m: done.append(m.body), poll_wait=1)
    thread = run_in_thread(worker)
    wait_for(lambda: len(done) == 30, timeout=20)
    wait_for(lambda: client.get_queue("rides")["in_flight"] == 0, timeout=5)
    worker.stop()
    thread.join(10)
    assert sorted(done) == list(range(30))
    assert (client.get_queue("rides")["ready"], worker.stats["processed"], worker.stats["stale"]) == (0, 30, 0)
    assert counting.calls["ack_and_receive"] >= 29
    assert counting.calls["ack"] <= 1


def test_worker_acks_of_handlers_that_finish_together_go_in_one_request(client, server, token):
    # Four handlers released at once while the fetcher long-polls an empty
    # queue: their acks cannot wait for a receive; they go now, together.
    client.put_queue("together")
    client.send_batch("together", [{"body": i} for i in range(4)])
    counting = CountingClient(server, token)
    gate = threading.Event()
    started: list[int] = []

    def handler(message):
        started.append(message.body)
        gate.wait(10)

    worker = Worker(counting, "together", handler, concurrency=4, prefetch=4, poll_wait=5)
    thread = run_in_thread(worker)
    wait_for(lambda: len(started) == 4, timeout=10)
    time.sleep(0.3)  # the fetcher is in its long poll (free prefetch slots)
    gate.set()
    wait_for(lambda: client.get_queue("together")["in_flight"] == 0, timeout=5)
    worker.stop()
    thread.join(10)
    assert worker.stats["processed"] == 4
    assert 1 <= counting.calls["ack"] <= 3  # not one per message
    assert counting.calls["ack_and_receive"] == 0


def test_a_streaming_worker_takes_pushed_messages_and_acks_on_its_stream(client, server, token):
    # No receive and no ack request: deliveries come on the consume stream,
    # acks go back on it, and stopping leaves nothing in flight.
    client.put_queue("pushed")
    client.send_batch("pushed", [{"body": i} for i in range(200)])
    counting = CountingClient(server, token)
    done: list[int] = []
    worker = Worker(counting, "pushed", lambda m: done.append(m.body), concurrency=2, prefetch=4, stream=True)
    thread = run_in_thread(worker)
    wait_for(lambda: len(done) == 200, timeout=30)
    wait_for(lambda: client.get_queue("pushed")["in_flight"] == 0, timeout=5)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(done) == list(range(200))
    assert (worker.stats["processed"], worker.stats["stale"]) == (200, 0)
    assert counting.calls == {"ack": 0, "ack_and_receive": 0}
    counts = client.get_queue("pushed")
    assert (counts["ready"], counts["in_flight"]) == (0, 0)
    assert consumer_named(client, worker.name)["status"] == "left"
