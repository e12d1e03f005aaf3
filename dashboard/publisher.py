"""What the dashboards see, computed once per broker and pushed to the
channel-layer group every dashboard socket joins.

Two producers feed the group:

* The **aggregator** (``publish_tick``) runs as a monitor tick hook, so only
  the leader monitor runs it. About once a second it reads the live counts
  (folded counters + pending deltas: a few indexed queries, never a COUNT over
  the messages table), derives in/out rates from the monotonic totals, and
  sends one batch: a ``queue`` frame per queue that changed, a ``consumer``
  frame per consumer that changed, and a ``tick`` frame with broker totals.
  Its cost depends on the number of queues and consumers, not on the number of
  open dashboards: sockets only relay.
* The **event flusher** runs in every process. ``queues.events`` records an
  event after its transaction commits, in the process that committed it (a
  request-serving process, the monitor…). The flusher thread of that process
  drains the buffer, coalesces bursts ("37 redeliveries in orders") and sends
  them, so dashboards on every process see them through a shared (Redis)
  layer.

Sending to the layer from a thread: the in-memory layer is a set of
``asyncio.Queue``s that must only be touched from the loop the sockets run on,
so sends are handed to that loop (recorded when a socket connects). With no
socket in this process an in-memory send would reach nobody and is skipped;
a Redis layer gets a private loop thread of this module instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Coroutine
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from queues import broker, events
from queues.models import GONE, Consumer, Queue, QueueCounts

log = logging.getLogger(__name__)

GROUP = "mq-dashboard"
PUBLISH_SECONDS = 1.0  # the aggregator publishes at most this often
RATE_WINDOW_SECONDS = 5.0  # rates are averaged over this window, so a chart doesn't saw
CONSUMER_INFLIGHT_SECONDS = 5.0  # in-flight per consumer is a (bounded) count: refresh less often
EVENT_FLUSH_SECONDS = 0.25  # events are gathered this long before a flush: bursts become one
COALESCE_OVER = 3  # more events of one kind in one queue per flush than this become one line
COALESCE_SAMPLE = 5  # example messages kept in a coalesced event
HISTORY_SECONDS = 15 * 60
QUEUE_HISTORY_STEP_SECONDS = 5.0  # per-queue history resolution (1,000 queues x 180 points)
RECENT_EVENTS = 200  # events replayed to a dashboard that (re)connects
SEND_TIMEOUT_SECONDS = 5.0


# --------------------------------------------------------------------------- #
# Sending from threads
# --------------------------------------------------------------------------- #

_serving_loop: asyncio.AbstractEventLoop | None = None
_own_loop: asyncio.AbstractEventLoop | None = None
_own_loop_lock = threading.Lock()


def register_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by each dashboard socket: the loop sockets of this process run on."""
    global _serving_loop
    _serving_loop = loop


def _private_loop() -> asyncio.AbstractEventLoop:
    global _own_loop
    with _own_loop_lock:
        if _own_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="mq-dashboard-send", daemon=True).start()
            _own_loop = loop
        return _own_loop


def _target_loop() -> asyncio.AbstractEventLoop | None:
    """The loop to send on, or None when a send could reach nobody."""
    layer = get_channel_layer()
    if layer is None:
        return None
    if isinstance(layer, InMemoryChannelLayer):
        loop = _serving_loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None  # no socket in this process: nobody to tell
        return loop
    return _private_loop()


def _run(make: Any) -> None:
    """Run the coroutine ``make(layer)`` on the loop this layer needs, and wait."""
    loop = _target_loop()
    if loop is None:
        return
    layer = get_channel_layer()
    coro: Coroutine[Any, Any, Any] = make(layer)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:  # called on the loop itself: it cannot wait for itself
        loop.create_task(coro)
        return
    asyncio.run_coroutine_threadsafe(coro, loop).result(SEND_TIMEOUT_SECONDS)


_batches = itertools.count(1)


def publish(frames: list[dict[str, Any]]) -> None:
    """Record frames in this process's history and send them to every
    dashboard, as one channel-layer message."""
    if not frames:
        return
    batch = f"{_BOOT}-{next(_batches)}"
    history.observe(frames, batch)
    _run(lambda layer: layer.group_send(GROUP, {"type": "dashboard.frames", "batch": batch, "frames": frames}))


# --------------------------------------------------------------------------- #
# The aggregator (leader only)
# --------------------------------------------------------------------------- #


class History:
    """The last 15 minutes, kept in every process that sees ticks: broker
    totals per second, each queue's depth and rates every few seconds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen_batches: deque[str] = deque(maxlen=256)
        self.total: deque[list[float]] = deque(maxlen=int(HISTORY_SECONDS / PUBLISH_SECONDS))
        self.queues: dict[str, deque[list[float]]] = defaultdict(
            lambda: deque(maxlen=int(HISTORY_SECONDS / QUEUE_HISTORY_STEP_SECONDS))
        )
        self.latest: dict[str, dict[str, Any]] = {}  # last queue frame per queue (for rates on connect)
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._queue_step_at = 0.0

    def observe(self, frames: list[dict[str, Any]], batch: str) -> None:
        """Record a batch (sent from this process, or relayed from another);
        each is recorded once however many sockets relay it."""
        with self.lock:
            if batch in self.seen_batches:
                return
            self.seen_batches.append(batch)
            tick = next((f for f in frames if f["type"] == "tick"), None)
            for f in frames:
                if f["type"] == "queue":
                    self.latest[f["name"]] = f
                elif f["type"] == "queue_removed":
                    self.latest.pop(f["name"], None)
                    self.queues.pop(f["name"], None)
                elif f["type"] == "event":
                    self.events.append(f)
            if tick is None:
                return
            at = tick["at"]
            t = tick["totals"]
            self.total.append([at, t["ready"], t["in_flight"], t["delayed"], t["in_rate"], t["out_rate"]])
            if at - self._queue_step_at >= QUEUE_HISTORY_STEP_SECONDS:
                self._queue_step_at = at
                for name, q in self.latest.items():
                    self.queues[name].append([at, q["ready"], q["in_flight"], q["delayed"], q["in_rate"], q["out_rate"]])

    def series(self, queue: str | None) -> dict[str, Any]:
        """Columns for a chart: t, ready, in_flight, delayed, in_rate, out_rate."""
        with self.lock:
            rows = list(self.total if queue is None else self.queues.get(queue, ()))
        keys = ("t", "ready", "in_flight", "delayed", "in_rate", "out_rate")
        return {"queue": queue, **{k: [r[i] for r in rows] for i, k in enumerate(keys)}}

    def recent_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events)


history = History()
# Names this process's batches apart from every other process's.
_BOOT = f"{os.getpid()}-{time.time():.0f}"


class Aggregator:
    """Turns live counts into frames; remembers what it last sent so a tick
    sends only what changed."""

    def __init__(self) -> None:
        self.seq = 0
        self.last_run = -PUBLISH_SECONDS  # monotonic time of the last publish
        self.samples: dict[int, deque[tuple[float, int, int]]] = defaultdict(deque)
        self.sent_queues: dict[int, tuple[Any, ...]] = {}
        self.names: dict[int, str] = {}
        self.sent_consumers: dict[str, tuple[Any, ...]] = {}
        self.inflight: dict[str, int] = {}
        self.inflight_at = 0.0

    def rates(self, qid: int, now: float, sent: int, acked: int) -> tuple[float, float]:
        window = self.samples[qid]
        window.append((now, sent, acked))
        while len(window) > 1 and window[0][0] < now - RATE_WINDOW_SECONDS:
            window.popleft()
        t0, s0, a0 = window[0]
        if now - t0 < 0.5:
            return 0.0, 0.0
        return round(max(0, sent - s0) / (now - t0), 2), round(max(0, acked - a0) / (now - t0), 2)

    def queue_frames(self, now: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Three columns, not whole Queue rows: a tick sends counts, and a
        # thousand queues read as model instances cost several times the
        # database time, and far more CPU, every second.
        rows = list(Queue.objects.values_list("id", "name", "paused"))
        counts = broker.queue_counts(now=now)  # every queue, without a list of their ids
        frames: list[dict[str, Any]] = []
        totals: dict[str, Any] = dict.fromkeys(("ready", "delayed", "in_flight", "dead"), 0)
        totals.update(in_rate=0.0, out_rate=0.0, queues=len(rows))
        seen = set()
        for qid, name, paused in rows:
            seen.add(qid)
            self.names[qid] = name
            c = counts.get(qid)
            if c is None:
                continue
            in_rate, out_rate = self.rates(qid, now, c.totals.get("sent_total", 0), c.totals.get("acked_total", 0))
            frame = queue_frame(name, c, paused=paused, in_rate=in_rate, out_rate=out_rate, now=now)
            for k in ("ready", "delayed", "in_flight", "dead", "in_rate", "out_rate"):
                totals[k] += frame[k]
            # The oldest message's enqueue time, not its age: an unchanged
            # queue whose age merely grows is not resent.
            key = tuple(v for k, v in frame.items() if k not in ("at", "oldest_ready_age"))
            if self.sent_queues.get(qid) != key:
                self.sent_queues[qid] = key
                frames.append(frame)
        for qid in set(self.sent_queues) - seen:
            del self.sent_queues[qid]
            self.samples.pop(qid, None)
            frames.append({"type": "queue_removed", "name": self.names.pop(qid, "")})
        totals["in_rate"] = round(totals["in_rate"], 2)
        totals["out_rate"] = round(totals["out_rate"], 2)
        return frames, totals

    def consumer_frames(self, now: float) -> list[dict[str, Any]]:
        consumers = list(Consumer.objects.listed(now).order_by("name", "id"))
        if now - self.inflight_at >= CONSUMER_INFLIGHT_SECONDS or any(c.id not in self.inflight for c in consumers):
            live = [c.id for c in consumers if c.status not in GONE]
            self.inflight = broker.consumer_in_flight(live) if live else {}
            self.inflight.update({c.id: 0 for c in consumers if c.id not in self.inflight})
            self.inflight_at = now
        frames = []
        seen = set()
        for c in consumers:
            seen.add(c.id)
            # A gone consumer's leases were released when it died or left.
            frame: dict[str, Any] = {"type": "consumer", **c.to_dict(0 if c.status in GONE else self.inflight.get(c.id, 0))}
            key = (frame["status"], frame["last_heartbeat"], frame["in_flight"], tuple(frame["queues"]))
            if self.sent_consumers.get(c.id) != key:
                self.sent_consumers[c.id] = key
                frames.append(frame)
        for cid in set(self.sent_consumers) - seen:
            del self.sent_consumers[cid]
            frames.append({"type": "consumer_removed", "id": cid})
        return frames

    def tick(self, now: float) -> list[dict[str, Any]]:
        self.seq += 1
        frames, totals = self.queue_frames(now)
        frames += self.consumer_frames(now)
        frames.append({"type": "tick", "seq": self.seq, "at": round(now, 3), "totals": totals})
        return frames


aggregator = Aggregator()


def publish_tick(now: float | None = None, *, force: bool = False) -> list[dict[str, Any]]:
    """The monitor tick hook: publish counts, rates and consumer health about
    once a second. Returns the frames sent (empty when not due)."""
    now = time.time() if now is None else now
    # Paced on the monotonic clock: a caller's ``now`` (tests pass times in
    # the future) must not silence the next hour of ticks.
    started = time.monotonic()
    if not force and started - aggregator.last_run < PUBLISH_SECONDS:
        return []
    aggregator.last_run = started
    try:
        frames = aggregator.tick(now)
        publish(frames)
    except Exception:  # a dashboard or layer failure must not stop the monitor's real work
        log.exception("could not publish the dashboard tick")
        return []
    return frames


# --------------------------------------------------------------------------- #
# Snapshot (per socket, on connect)
# --------------------------------------------------------------------------- #


def queue_frame(name: str, counts: QueueCounts, *, paused: bool, in_rate: float, out_rate: float, now: float) -> dict[str, Any]:
    """A ``queue`` frame: one queue's counts (``QueueCounts.to_dict``) and
    what only a dashboard shows with them."""
    return {"type": "queue", "name": name, "paused": paused, **counts.to_dict(), **_lively(counts, in_rate, out_rate, now)}


def _lively(counts: QueueCounts, in_rate: float, out_rate: float, now: float) -> dict[str, Any]:
    """What a dashboard shows beside a queue's counts: its rates, the
    oldest ready message's enqueue time, and when they were read."""
    oldest_at = None if counts.oldest_ready_age is None else round(now - counts.oldest_ready_age)
    return {"oldest_ready_at": oldest_at, "in_rate": in_rate, "out_rate": out_rate, "at": round(now, 3)}


def snapshot(now: float | None = None) -> dict[str, Any]:
    """Everything a dashboard shows, read fresh: counts from the database,
    rates from the last tick this process saw (0 until one arrives)."""
    now = time.time() if now is None else now
    queues = []
    for q, counts in broker.list_queues():
        seen = history.latest.get(q.name, {})
        # The whole queue, as the API shows it: its settings come along.
        queues.append({**q.to_dict(counts), **_lively(counts, seen.get("in_rate", 0.0), seen.get("out_rate", 0.0), now)})
    consumers = list(Consumer.objects.listed(now).order_by("name", "id"))
    live = [c.id for c in consumers if c.status not in GONE]
    inflight = broker.consumer_in_flight(live) if live else {}
    rows = [consumer.to_dict(inflight.get(consumer.id, 0)) for consumer in consumers]
    return {
        "type": "snapshot",
        "at": round(now, 3),
        "queues": queues,
        "consumers": rows,
        "events": history.recent_events(),
        "history": history.series(None),
    }


# --------------------------------------------------------------------------- #
# Events: every process flushes what it committed
# --------------------------------------------------------------------------- #


def coalesce(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Event frames for a batch: a burst of one kind in one queue becomes one
    frame with a count ("37 redeliveries in orders") and a few examples."""
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
    for e in raw:
        groups[(e["kind"], e.get("queue"))].append(e)
    frames = []
    for (kind, queue), items in groups.items():
        if len(items) > COALESCE_OVER:
            frames.append(
                {
                    "type": "event",
                    "kind": kind,
                    "queue": queue,
                    "at": round(items[-1]["at"], 3),
                    "events": len(items),
                    "coalesced": True,
                    "examples": [_event_data(e) for e in items[:COALESCE_SAMPLE]],
                }
            )
        else:
            frames += [
                {"type": "event", "kind": kind, "queue": queue, "at": round(e["at"], 3), "events": 1, **_event_data(e)}
                for e in items
            ]
    frames.sort(key=lambda f: f["at"])
    return frames


def _event_data(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in ("kind", "queue", "at", "type")}


def flush_events() -> list[dict[str, Any]]:
    """Drain this process's event buffer to the dashboards. Returns the frames.

    With an in-memory layer and no dashboard in this process the buffer is
    left alone (bounded, oldest dropped): the first dashboard to connect gets
    the recent ones, and code that drains the buffer itself (tests) keeps its
    events."""
    if _target_loop() is None:
        return []
    raw = events.drain()
    if not raw:
        return []
    frames = coalesce(raw)
    try:
        publish(frames)
    except Exception:
        log.exception("could not publish %d dashboard events", len(frames))
    return frames


class Flusher:
    """A thread per process, woken by each recorded event; waits a moment so
    a burst goes out as one flush."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def notify(self) -> None:
        self.wake.set()
        if self.thread is None:
            with self.lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self.run, name="mq-dashboard-events", daemon=True)
                    self.thread.start()

    def run(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(EVENT_FLUSH_SECONDS)
            self.wake.clear()
            flush_events()


flusher = Flusher()


def install() -> None:
    """Hook into the monitor and the event buffer (from AppConfig.ready)."""
    from queues import monitor

    if publish_tick not in monitor.TICK_HOOKS:
        monitor.TICK_HOOKS.append(publish_tick)
    if flusher.notify not in events._listeners:
        events.subscribe(flusher.notify)
