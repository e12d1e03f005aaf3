"""The scenarios of ``mq bench``: each one measures mqadmin over its real
HTTP API and streams (a ``mq serve`` started for the run) and, beside it,
every peer that can run here, in turns (``Runner.interleaved``)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial

import psycopg
from mqclient import Client

from queues import broker
from queues.models import Queue

from . import lean, raw, wal
from .fifo import fifo_receive
from .measure import (
    BODY,
    PREFETCH,
    PREFIX,
    BenchError,
    Countdown,
    Measure,
    Stat,
    conninfo,
    db_timer,
    latency_stat,
    rounds_of,
    run_consumers,
    skipped,
)
from .procrastinate import procrastinate_available, procrastinate_defer, procrastinate_latency, procrastinate_worker
from .rabbitmq import rabbit_available, rabbit_drain, rabbit_latency, rabbit_publish
from .runner import Runner
from .server import Api, mq_server
from .table import Row, machine_line, table_rows

# Batches a producer's publish stream has on their way, unanswered, at most.
PUBLISH_WINDOW = 8
# In the latency scenario: mqadmin with its consumer on a consume stream.
STREAMED = "mqadmin_stream"
# mqadmin once more, a server of its own where claims and acks commit
# without waiting for the WAL flush: a column of its own in the drain and
# round-trip rows; the headline figures stay with the default.
ASYNC = "mqadmin_async"


class Bench(Runner):
    """Every scenario, in the order of the table."""

    def run(self) -> list[Row]:
        began = time.monotonic()
        self.setup()
        load_before = os.getloadavg()
        self.say(f"mq bench: {self.s}")
        self.say(f"machine: {machine_line(self.machine)}")
        self.rabbit_reason = rabbit_available() if "rabbitmq" in self.peers else "not selected"
        self.procrastinate_reason = procrastinate_available() if "procrastinate" in self.peers else "not selected"
        self.lean_reason = lean.lean_available() if "lean" in self.peers else "not selected"
        try:
            with mq_server(self.results_dir / "server.log") as url:
                self.url = url
                self.scenario_produce()
                with self.async_server():
                    self.scenario_drain()
                    self.scenario_round_trip()
                self.scenario_latency()
                self.scenario_big()
                self.scenario_herd()
                self.scenario_fifo()
            # With the server gone: the database is as quiet as it gets here.
            self.scenario_wal()
        finally:
            lean.drop_schema()
        self.scenario_dashboard()
        self.machine["load_average_before"] = [round(x, 2) for x in load_before]
        self.machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        self.machine["duration_s"] = round(time.monotonic() - began, 1)
        return self.rows()

    def scenario_produce(self) -> None:
        s = self.s
        self.say("1-2. produce")
        batch = [BODY] * 100

        def mq_batches() -> float:
            api = Api(self.url, self.token)
            try:
                t = time.perf_counter()
                for _ in range(s.batches):
                    api.send(PREFIX + "produce", batch)
                return s.batches * 100 / (time.perf_counter() - t)
            finally:
                api.close()
                self.empty("produce")

        def mq_singles() -> float:
            api = Api(self.url, self.token)
            try:
                t = time.perf_counter()
                for _ in range(s.singles):
                    api.send(PREFIX + "single", [BODY])
                return s.singles / (time.perf_counter() - t)
            finally:
                api.close()
                self.empty("single")

        def mq_published(name: str, per: int, count: int) -> float:
            """Through a publish stream: PUBLISH_WINDOW batches unanswered at
            most, each answered after its commit."""
            messages = [{"body": BODY}] * per
            try:
                with Client(self.url, self.token, timeout=60).publisher(PREFIX + name, window=PUBLISH_WINDOW) as pub:
                    t = time.perf_counter()
                    for _ in range(count):
                        pub.send_batch(messages)
                    answers = pub.flush()
                    rate = per * count / (time.perf_counter() - t)
                refused = [a.error for a in answers if a.error is not None]
                if refused or len(answers) != count:
                    raise BenchError(f"publish stream: {len(answers)} answers, refused: {refused[:1]}")
                return rate
            finally:
                self.empty(name)

        batches = [
            Measure(
                "mqadmin",
                lambda: mq_published("produce", 100, s.batches),
                twins=(mq_batches,),
                twin_note=f"(publish stream, {PUBLISH_WINDOW} batches in flight; " "over HTTP, a request a batch: {:,.0f}/s)",
            )
        ]
        singles = [
            Measure(
                "mqadmin",
                mq_singles,
                twins=(lambda: mq_published("single", 1, s.singles),),
                twin_note=f"(a request each; on a publish stream, {PUBLISH_WINDOW} in flight: " "{:,.0f}/s)",
            )
        ]
        if "raw" in self.peers:
            batches.append(Measure("raw", lambda: raw.produce(self, 100, s.batches)))
            singles.append(Measure("raw", lambda: raw.produce(self, 1, s.singles)))
        if self.lean_reason is None:
            batches.append(Measure("lean", lambda: lean.produce(100, s.batches)))
            singles.append(Measure("lean", lambda: lean.produce(1, s.singles)))
        if self.rabbit_reason is None:
            batches.append(Measure("rabbitmq", lambda: rabbit_publish(s.batches * 100, confirms=False), "(no confirms)"))
            singles.append(Measure("rabbitmq", lambda: rabbit_publish(s.singles, confirms=True), "(confirms)"))
        if self.procrastinate_reason is None:
            batches.append(Measure("procrastinate", lambda: procrastinate_defer(s.batches, 100), "(batch_defer)"))
            singles.append(Measure("procrastinate", lambda: procrastinate_defer(s.singles, 1), "(defer)"))
        self.interleaved("produce_batch", batches)
        self.interleaved("produce_single", singles)

    @contextmanager
    def async_server(self) -> Iterator[None]:
        """With ASYNC among the peers, a second server for the block, with
        MQ_ASYNC_COMMIT=on (``self.urls[ASYNC]``)."""
        if ASYNC not in self.peers:
            yield
            return
        with mq_server(self.results_dir / "server-async.log", {"MQ_ASYNC_COMMIT": "on"}) as url:
            self.urls[ASYNC] = url
            try:
                yield
            finally:
                del self.urls[ASYNC]

    def mq_drain(self, name: str, consumers: int, total: int, per: int, *, separate_acks: bool = False, peer: str = "mqadmin") -> float:
        """Consumers lease ``per`` at a time and ack them all. Each receive
        carries the acks of the batch before it (one call a round), or, with
        ``separate_acks``, each batch is acked by a call of its own. ``peer``:
        mqadmin's server, or ASYNC's."""
        self.prefill(name, total)
        queue = PREFIX + name
        url = self.urls.get(peer, self.url)

        def work(countdown: Countdown) -> None:
            api = Api(url, self.token)
            held: list[str] = []
            try:
                while not countdown.over:
                    if separate_acks:
                        msgs = api.receive(queue, per)
                        if msgs:
                            api.ack(queue, [m["receipt"] for m in msgs])
                            countdown.done(len(msgs))
                        continue
                    acked, held = api.ack_and_receive(queue, held, per)
                    countdown.done(acked)
            finally:
                if held:  # leased after the others finished the count
                    api.ack(queue, held)
                api.close()

        try:
            return run_consumers(consumers, total, work)
        finally:
            self.empty(name)

    def scenario_drain(self) -> None:
        s = self.s
        self.say("3. receive 100 + ack 100")
        for n in (1, 4):
            measures = [self.mq_drain_measure("drain", n, s.drain, 100, peer=peer) for peer in self.mqadmins()]
            if "raw" in self.peers:
                measures.append(raw.drain_measure(self, n, s.drain, 100, with_statement_costs=n == 1))
            if self.lean_reason is None:
                measures.append(Measure("lean", partial(lean.drain, n, s.drain, 100), "(claim 100, ack 100: a statement and a commit each)"))
            if self.rabbit_reason is None:
                measures.append(Measure("rabbitmq", partial(rabbit_drain, n, s.drain, prefetch=100), "(manual ack)"))
            if self.procrastinate_reason is None:
                # A worker takes one job at a time: it drains a smaller batch.
                measures.append(Measure("procrastinate", partial(procrastinate_worker, s.trips, n), f"(worker, concurrency {n})"))
            self.interleaved(f"drain_{n}", measures)

    def mqadmins(self) -> list[str]:
        """mqadmin, and ASYNC where its server runs."""
        return ["mqadmin", ASYNC] if ASYNC in self.urls else ["mqadmin"]

    def mq_drain_measure(self, name: str, consumers: int, total: int, per: int, *, peer: str = "mqadmin") -> Measure:
        """The drain with acks riding on receives; as its twins (in the
        note), with an ack call of its own per batch, and on consume streams
        (twice the batch in flight, so the next is on its way while one is
        acked, as RabbitMQ's consumers here)."""
        return Measure(
            peer,
            lambda: self.mq_drain(name, consumers, total, per, peer=peer),
            twins=(
                lambda: self.mq_drain(name, consumers, total, per, separate_acks=True, peer=peer),
                lambda: self.mq_stream(name, consumers, total, prefetch=2 * per, ack_every=per, peer=peer),
            ),
            twin_note=(
                "(acks ride on the next receive; with an ack call of their own: {:,.0f}/s; "
                f"on consume streams, prefetch {2 * per}, acks per {per}: " "{:,.0f}/s)"
            ),
        )

    def mq_stream(self, name: str, consumers: int, total: int, *, prefetch: int, ack_every: int = 1, peer: str = "mqadmin") -> float:
        """Consumers on consume streams (the client's websocket): the server
        pushes up to ``prefetch`` unacked; each acks every ``ack_every``."""
        self.prefill(name, total)
        queue = PREFIX + name
        url = self.urls.get(peer, self.url)

        def work(countdown: Countdown) -> None:
            with Client(url, self.token, timeout=60).consume(queue, prefetch=prefetch) as stream:
                done: list[str] = []
                while not countdown.over:
                    got = stream.receive(timeout=0.05)
                    for message in got:
                        done.append(message.receipt)
                        if len(done) >= ack_every:
                            stream.ack(done)
                            countdown.done(len(done))
                            done = []
                    # Nothing more came: what is held is acked now. Claims
                    # racing for the last messages split them, and consumers
                    # each holding less than ``ack_every`` would otherwise
                    # wait for the leases to run out.
                    if done and not got:
                        stream.ack(done)
                        countdown.done(len(done))
                        done = []
                if done:
                    stream.ack(done)

        try:
            return run_consumers(consumers, total, work)
        finally:
            self.empty(name)

    def scenario_round_trip(self) -> None:
        s = self.s
        self.say("4. one message per round trip")
        measures = [
            Measure(
                peer,
                partial(self.mq_stream, "trip", 1, s.trips, prefetch=1, peer=peer),
                twins=(
                    partial(self.mq_drain, "trip", 1, s.trips, 1, peer=peer),
                    partial(self.mq_drain, "trip", 1, s.trips, 1, separate_acks=True, peer=peer),
                ),
                twin_note=(
                    "(consume stream, prefetch 1; over HTTP, the ack riding on the next receive: {:,.0f}/s, "
                    "with an ack call of its own: {:,.0f}/s)"
                ),
            )
            for peer in self.mqadmins()
        ]
        if "raw" in self.peers:
            measures.append(Measure("raw", lambda: raw.drain(self, "raw", 1, s.trips, 1)))
        if self.lean_reason is None:
            measures.append(
                Measure(
                    "lean",
                    partial(lean.drain, 1, s.trips, 1),
                    twins=(partial(lean.drain, 1, s.trips, 1, riding=True),),
                    twin_note="(claim 1 + ack 1, a commit each; the ack riding on the next claim, one commit a message: {:,.0f}/s)",
                )
            )
        if self.rabbit_reason is None:
            measures.append(Measure("rabbitmq", lambda: rabbit_drain(1, s.trips, prefetch=1), "(prefetch 1)"))
        if self.procrastinate_reason is None:
            measures.append(Measure("procrastinate", lambda: procrastinate_worker(s.trips, 1), "(worker)"))
        self.interleaved("round_trip", measures)
        # One message at a time, each acked on its own, with a window of
        # PREFETCH delivered ahead (RabbitMQ's consumers are used so).
        # Procrastinate's worker has no window: its cell is row 4's.
        self.say(f"4b. one message at a time, prefetch {PREFETCH}")
        measures = [Measure("mqadmin", lambda: self.mq_stream("trip", 1, s.windowed, prefetch=PREFETCH), f"(consume stream, prefetch {PREFETCH})")]
        if self.rabbit_reason is None:
            measures.append(
                Measure("rabbitmq", lambda: rabbit_drain(1, s.windowed, prefetch=PREFETCH, ack_every=1), f"(prefetch {PREFETCH}, ack each)")
            )
        self.interleaved("windowed", measures)
        worker = self.stats.get("round_trip", {}).get("procrastinate")
        if worker is not None:
            self.stats["windowed"]["procrastinate"] = replace(worker, note="(worker: no prefetch; row 4's)")

    def scenario_latency(self) -> None:
        s = self.s
        self.say("5. send -> long-polling consumer")
        peers: list[tuple[str, Callable[[int], list[float]], str]] = [
            ("mqadmin", self.mq_latency, ""),
            (STREAMED, partial(self.mq_latency, stream=True), ""),
        ]
        if "raw" in self.peers:
            peers.append(("raw", partial(raw.latency, self), "(LISTEN/NOTIFY + claim)"))
        if self.rabbit_reason is None:
            peers.append(("rabbitmq", rabbit_latency, "(push)"))
        if self.procrastinate_reason is None:
            peers.append(("procrastinate", procrastinate_latency, "(worker)"))
        # Rounds of sends for each peer in turn, as the rates are measured:
        # a slow spell of the machine lands in every peer's percentiles alike.
        samples, failed = self.in_turns({peer: partial(measure, s.latency) for peer, measure, _ in peers})
        # The consume stream's percentiles go in mqadmin's note: the row is
        # about a long-polling consumer; a stream is a pushed one.
        streamed = [ms for one in samples.pop(STREAMED, []) for ms in one]
        peers = [p for p in peers if p[0] != STREAMED]
        if streamed and "mqadmin" not in failed:
            pushed = latency_stat(streamed)
            peers[0] = ("mqadmin", self.mq_latency, f"(long poll; on a consume stream: p50 {pushed.median:.1f} ms, p99 {pushed.p99:.1f} ms)")
        for peer, _measure, note in peers:
            if peer in failed:
                self.put("latency", peer, skipped(failed[peer]))
            else:
                self.put("latency", peer, latency_stat([ms for one in samples[peer] for ms in one], note))

    def mq_latency(self, n: int, *, stream: bool = False) -> list[float]:
        """Long-polling consumer, or with ``stream`` one on a consume stream
        (prefetch 1)."""
        queue = PREFIX + "latency"
        got: dict[int, float] = {}
        arrived = threading.Event()
        stop = threading.Event()

        def arrive(i: int) -> None:
            got[i] = time.perf_counter()
            arrived.set()

        def polling() -> None:
            api = Api(self.url, self.token)
            try:
                while not stop.is_set():
                    msgs = api.receive(queue, 1, wait=2)
                    for m in msgs:
                        arrive(m["body"]["i"])
                    if msgs:
                        api.ack(queue, [m["receipt"] for m in msgs])
            finally:
                api.close()

        def streaming() -> None:
            with Client(self.url, self.token, timeout=60).consume(queue, prefetch=1) as consumed:
                while not stop.is_set():
                    for m in consumed.receive(timeout=0.2):
                        arrive(m.body["i"])
                        consumed.ack([m.receipt])

        consumer = streaming if stream else polling
        return self.latency_loop(n, consumer, stop, arrived, got, lambda api, i: api.send(queue, [BODY | {"i": i}]))

    # -- 6. claim with N waiting -------------------------------------------------

    def load_big(self) -> None:
        """Top the big queue up to N ready messages, in one statement."""
        qid = self.queue_ids["big"]
        counts = broker.queue_counts([qid])[qid]
        missing = self.s.big - counts.ready
        if missing <= 0:
            self.say(f"6. {counts.ready:,} messages already waiting in {PREFIX}big")
            return
        self.say(f"6. loading {missing:,} messages into {PREFIX}big (INSERT ... SELECT FROM generate_series)")
        t = time.perf_counter()
        raw.fill_ready(qid, missing)
        self.vacuum(full_scan=True)
        self.say(f"   loaded in {time.perf_counter() - t:.0f}s")

    def scenario_big(self) -> None:
        s = self.s
        try:
            self.load_big()
        except Exception as exc:
            self.put("claim_big", "mqadmin", skipped(f"load failed: {exc}"))
            return
        mq_small, mq_big, raw_small, raw_big = [], [], [], []
        for _ in range(s.rounds):
            # Alternate, so drift on a shared machine hits both alike.
            mq_small.append(self.mq_drain("small", 1, s.drain, 100))
            mq_big.append(self.mq_big_drain(s.drain))
            if "raw" in self.peers:
                raw_small.append(raw.drain(self, "small", 1, s.drain, 100))
                raw_big.append(raw.drain(self, "big", 1, s.drain, 100, fill=False))
        self.put("claim_small", "mqadmin", Stat(mq_small))
        self.put("claim_big", "mqadmin", Stat(mq_big))
        if raw_small:
            self.put("claim_small", "raw", Stat(raw_small))
            self.put("claim_big", "raw", Stat(raw_big))

    def mq_big_drain(self, total: int) -> float:
        queue = PREFIX + "big"

        def work(countdown: Countdown) -> None:
            api = Api(self.url, self.token)
            held: list[str] = []
            try:
                while not countdown.over:
                    acked, held = api.ack_and_receive(queue, held, 100)
                    if not held:
                        raise RuntimeError(f"{queue} ran dry")
                    countdown.done(acked)
            finally:
                if held:
                    api.ack(queue, held)
                api.close()

        return run_consumers(1, total, work)

    # -- 8. many waiting consumers ----------------------------------------------------

    def scenario_herd(self) -> None:
        """Row 8: a fleet of consumers long-polling one queue, fed sends of
        100 (``mqtools.herd``): each consumer takes one message a round."""
        from mqtools import herd

        s = self.s
        self.say(f"8. {s.herd:,} consumers long-polling one queue, {s.herd:,} messages a round in sends of {herd.BATCH}")
        alone = latency_stat([x * 1000 for x in herd.sends_alone(self.url, self.token, sends=max(10, s.herd // herd.BATCH))])
        result = herd.run(self.url, self.token, consumers=s.herd, rounds=s.rounds)
        self.say("   " + result.summary().replace("\n", "\n   "))
        failed = result.refused + result.reset + result.errors
        self.put("herd_send", "mqadmin", latency_stat(
            [x * 1000 for x in result.sends],
            f"({s.herd:,} waiting; nobody waiting: p50 {alone.median:.1f} ms, p99 {alone.p99:.1f} ms)",
        ))
        spans = [r.last_after_send * 1000 if r.last_after_send is not None else herd.ROUND_TIMEOUT * 1000 for r in result.rounds]
        delivered = sum(r.delivered for r in result.rounds)
        self.put("herd_delivered", "mqadmin", Stat(
            values=spans, unit="ms",
            note=f"({delivered:,} of {sum(r.expected for r in result.rounds):,} delivered; polls refused {result.refused}, "
                 f"reset {result.reset}, failed otherwise {result.errors})",
        ))
        self.put("herd_failures", "mqadmin", Stat(values=[failed + sum(r.expected - r.delivered for r in result.rounds)], unit="polls"))

    # -- 9. a FIFO queue's receive with many consumers -----------------------------

    def scenario_fifo(self) -> None:
        fifo_receive(self)

    # -- 10. WAL per message ---------------------------------------------------------

    def scenario_wal(self) -> None:
        """What mqadmin's statements and the lean floor's write to the WAL
        (``wal``): a table of its own, beside the rates."""
        peers: dict[str, Callable[[], wal.Peer]] = {}
        if "raw" in self.peers:
            qid = self.queue_ids["raw"]
            peers["raw"] = lambda: wal.MqadminStatements(self.raw(), qid, partial(self.prefill, "raw"), partial(self.empty, "raw"))
        if self.lean_reason is None:
            peers["lean"] = wal.LeanStatements
        if not peers:
            return
        self.say("10. WAL per message")
        try:
            lean.create_schema()  # pg_walinspect goes in it
        except Exception as exc:
            self.say(f"  skipped: {exc}")
            return
        with psycopg.connect(conninfo(), autocommit=True) as conn:
            reader = wal.WalReader(conn)
            for name, make in peers.items():
                peer = make()
                try:
                    self.wal_by_peer[name] = wal.measure(peer, reader, self.s.drain)
                except Exception as exc:
                    self.say(f"  {name:<14} failed: {type(exc).__name__}: {str(exc)[:120]}")
                    continue
                finally:
                    peer.conn.close()
                w = self.wal_by_peer[name]
                self.say(f"  {name:<14} a claimed and acked message: {wal.per_message(w.drain, w.messages)}; a sent one: {wal.per_message(w.send, w.messages)}")

    # -- 7. dashboard tick ----------------------------------------------------------

    def scenario_dashboard(self) -> None:
        s = self.s
        self.say(f"7. dashboard tick, {s.dash_queues} queues")
        have = Queue.objects.filter(name__startswith=PREFIX + "dash-").count()
        if have < s.dash_queues:
            names = [f"{PREFIX}dash-{i:04d}" for i in range(s.dash_queues)]
            existing = set(Queue.objects.filter(name__in=names).values_list("name", flat=True))
            for name in names:
                if name not in existing:
                    broker.put_queue(name, {})
        n_queues = Queue.objects.count()

        def counts_ms() -> float:
            with db_timer() as timer:
                broker.queue_counts()  # every queue
            return timer.ms

        broker.queue_counts()  # warm
        self.put("dashboard_counts", "mqadmin", Stat(rounds_of(max(3, s.rounds), counts_ms), unit="ms DB", note=f"({n_queues} queues)"))
        try:
            from dashboard.publisher import Aggregator
        except ImportError as exc:
            self.put("dashboard_tick", "mqadmin", skipped(f"no aggregator: {exc}"))
            return
        aggregator = Aggregator()

        def tick_ms() -> float:
            with db_timer() as timer:
                aggregator.tick(time.time())
            return timer.ms

        tick_ms()
        self.put("dashboard_tick", "mqadmin", Stat(rounds_of(max(3, s.rounds), tick_ms), unit="ms DB", note="(aggregator tick)"))
        # Gone again, so the next run's server does not carry them.
        Queue.objects.filter(name__startswith=PREFIX + "dash-").delete()

    # -- the table ---------------------------------------------------------------------

    def rows(self) -> list[Row]:
        reasons = {"lean": self.lean_reason, "rabbitmq": self.rabbit_reason, "procrastinate": self.procrastinate_reason}
        return table_rows(self.stats, self.s, {peer: why for peer, why in reasons.items() if why})
