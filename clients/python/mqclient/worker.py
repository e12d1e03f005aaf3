"""``Worker``: run a handler over a queue's messages, the way a queue should
be consumed without thinking about it.

- registers as a consumer and heartbeats in the background, so a crash is
  noticed by the server's monitor and the messages it held go to others at
  once, not after their visibility timeouts;
- extends the lease of a handler that runs long, so a slow message is not
  delivered twice;
- acks when the handler returns, nacks with exponential backoff when it
  raises; an ack rides on the fetcher's next receive when the fetcher is
  waiting for the handler's slot (one request a message, not two), else it
  goes at once, in one request with those of other handlers that finish
  meanwhile;
- on SIGTERM (or SIGINT) finishes the messages it has started, hands back
  the ones it has not, and leaves; a second signal releases everything at
  once and exits.

Threads: ``concurrency`` handler threads, one fetcher (long-polls for as many
messages as there are free slots), one keeper (heartbeats, lease
extensions). ``run()`` only supervises, so signals stay prompt.

With ``stream=True`` the fetcher holds a consume stream (a websocket; needs
the ``websockets`` package) instead of long-polling: the server pushes up to
``concurrency + prefetch`` messages ahead, and acks, nacks and extensions
go back on the stream, each as a frame, without waiting for an answer. A
handler that finishes finds its next message already delivered: with a
no-op handler, several times the messages a second of the request-a-message
fetcher.
"""

from __future__ import annotations

import logging
import math
import queue as queue_mod
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import Client
from .errors import ConsumerDead, ConsumerNotFound, MQError
from .records import Message
from .stream import Stream

log = logging.getLogger("mqclient.worker")

Handler = Callable[[Message], Any]

# Seconds to wait after the server could not be reached before trying again.
RETRY_SECONDS = 1.0
# A lease is extended when less than this fraction of it is left.
EXTEND_WHEN_LEFT = 1 / 3


@dataclass
class _Lease:
    message: Message
    expires: float  # time.monotonic() when the lease runs out, as we know it
    started: bool = False
    lost: bool = False


class Worker:
    """``Worker(client, "orders", handle).run()``: blocks until stopped;
    returns 0 after a graceful stop, 1 after a forced one."""

    def __init__(
        self,
        client: Client,
        queue: str,
        handler: Handler,
        *,
        name: str | None = None,
        concurrency: int = 1,
        prefetch: int = 0,
        heartbeat_timeout: int | None = None,
        visibility_timeout: int | None = None,
        poll_wait: float = 5.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        meta: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if stream:
            import importlib.util

            if importlib.util.find_spec("websockets") is None:
                raise ImportError("Worker(stream=True) needs the websockets package: pip install 'mqclient[stream]'")
        self.client = client
        self.queue = queue
        self.handler = handler
        self.name = name or f"{socket.gethostname()}:{getattr(handler, '__name__', 'handler')}"
        self.concurrency = concurrency
        self.prefetch = max(0, prefetch)
        self.heartbeat_timeout = heartbeat_timeout
        self.visibility_timeout = visibility_timeout
        self.poll_wait = poll_wait
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.meta = meta or {}
        self.streaming = stream

        self.consumer_id: str | None = None
        self.heartbeat_interval = 5.0
        self.lease_seconds = 30
        self.stats = {"processed": 0, "failed": 0, "stale": 0, "extended": 0, "reregistered": 0}

        self._lock = threading.Lock()
        self._held: dict[str, _Lease] = {}  # by receipt
        self._work: queue_mod.Queue[_Lease] = queue_mod.Queue()
        self._slots = threading.Semaphore(self.concurrency + self.prefetch)
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._wake = threading.Event()
        self._running = 0
        # Acks waiting for the fetcher's next receive; whether the fetcher is
        # inside a receive now (then an ack cannot wait for it).
        self._deferred: list[str] = []
        self._fetching = False
        # Acks to send, and whether a thread is sending them (group commit:
        # whoever finds none in flight sends all that gathered meanwhile).
        self._to_ack: list[str] = []
        self._acking = False
        # Receipts whose ack may have landed in a request that failed: a
        # stale answer on them is not a lost lease.
        self._maybe_acked: set[str] = set()
        # With ``stream``: the consume stream while it is up, and how many of
        # its stale answers were counted.
        self._stream: Stream | None = None
        self._stale_seen = 0

    # -- public ----------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Ask for a graceful stop (or, with ``force``, release everything)."""
        if force:
            self._force.set()
        self._stopping.set()
        self._wake.set()

    def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        # A worker may start before its server: wait for it. A refusal (bad
        # token, unknown queue) is final and raised.
        while True:
            try:
                self._register()
                if self.visibility_timeout is None:
                    self.lease_seconds = int(self.client.get_queue(self.queue)["visibility_timeout"]) or 30
                else:
                    self.lease_seconds = self.visibility_timeout
                break
            except OSError as exc:
                log.warning("cannot reach %s (%s); retrying", self.client.url, exc)
                if self._stopping.wait(RETRY_SECONDS):
                    return 0
        fetch = self._stream_loop if self.streaming else self._fetch_loop
        threads = [threading.Thread(target=fetch, name="mq-fetch", daemon=True)]
        threads += [threading.Thread(target=self._keep_loop, name="mq-keeper", daemon=True)]
        threads += [
            threading.Thread(target=self._handle_loop, name=f"mq-handler-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in threads:
            t.start()
        log.info("worker %s consuming %s as consumer %s", self.name, self.queue, self.consumer_id)
        while True:
            if self._force.is_set():
                released = self._leave()
                self._close_stream(ack_timeout=0)
                log.warning("forced stop: %s messages released to other workers", released)
                return 1
            if self._stopping.is_set():
                self._hand_back_unstarted()
                if self._idle():
                    self._flush_acks()
                    # Before leaving, which would release what the acks on it
                    # have yet to delete: it closes once they are answered.
                    if self.streaming:
                        threads[0].join(5)  # the fetcher, so that it reads no more
                        self._close_stream()
                    self._leave()
                    log.info("worker %s stopped gracefully", self.name)
                    return 0
            self._wake.wait(0.2)
            self._wake.clear()

    # -- signals ---------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            if self._stopping.is_set():
                log.warning("second %s: releasing everything and exiting", signal.Signals(signum).name)
                self.stop(force=True)
            else:
                log.info(
                    "%s: finishing %d started message(s), then leaving (again to force)",
                    signal.Signals(signum).name,
                    self._running,
                )
                self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- consumer lifecycle ----------------------------------------------------

    def _register(self) -> None:
        reg = self.client.register(self.name, [self.queue], meta=self.meta, heartbeat_timeout=self.heartbeat_timeout)
        self.consumer_id = reg.id
        self.heartbeat_interval = reg.heartbeat_interval

    def _reregister(self) -> None:
        """The server declared us dead (we were silent too long): the
        messages we held were given to others and their acks will be stale.
        Carry on under a new consumer id."""
        old = self.consumer_id
        while not self._stopping.is_set():
            try:
                self._register()
                self._count("reregistered")
                log.warning("consumer %s was declared dead; registered again as %s", old, self.consumer_id)
                return
            except (OSError, MQError) as exc:
                log.warning("could not register again (%s); retrying", exc)
                self._stopping.wait(RETRY_SECONDS)

    def _leave(self) -> int:
        if self.consumer_id is None:
            return 0
        try:
            # Its own connection: the threads' connections may be mid-request.
            return self.client.clone().leave(self.consumer_id)
        except ConsumerDead:
            return 0
        except (OSError, MQError) as exc:
            log.warning("could not leave cleanly (%s); the monitor will release our leases", exc)
            return 0

    # -- fetching --------------------------------------------------------------

    def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            self._slots.acquire()
            free = 1
            while self._slots.acquire(blocking=False):
                free += 1
            with self._lock:
                acks, self._deferred = self._deferred, []
                self._fetching = True
            try:
                if acks:
                    result, messages = self.client.ack_and_receive(
                        self.queue, acks, max=min(free, 100), wait=self.poll_wait, consumer=self.consumer_id
                    )
                    self._note_stale(acks, result.get("stale", []))
                else:
                    messages = self.client.receive(
                        self.queue, max=min(free, 100), wait=self.poll_wait, consumer=self.consumer_id
                    )
            except (ConsumerDead, ConsumerNotFound):
                messages = []
                self._send_acks(acks)  # refused before any ack was applied
                self._reregister()
            except (OSError, MQError) as exc:
                messages = []
                self._send_acks(acks, maybe_acked=True)
                log.warning("receive failed (%s); retrying", exc)
                self._stopping.wait(RETRY_SECONDS)
            finally:
                with self._lock:
                    self._fetching = False
            self._queue_work(messages)
            for _ in range(free - len(messages)):
                self._slots.release()

    def _queue_work(self, messages: list[Message]) -> None:
        """Leased messages, held and queued for the handlers."""
        now = time.monotonic()
        for message in messages:
            lease = _Lease(message, now + self.lease_seconds)
            with self._lock:
                self._held[message.receipt] = lease
            self._work.put(lease)

    def _stream_loop(self) -> None:
        """``stream=True``: deliveries pushed on a consume stream, its window
        the worker's slots. Reopened after a failure, and under a new
        consumer id after a re-registration."""
        while not self._stopping.is_set():
            consumer = self.consumer_id
            try:
                stream = self.client.consume(
                    self.queue,
                    prefetch=self.concurrency + self.prefetch,
                    visibility_timeout=self.visibility_timeout,
                    consumer=consumer,
                )
            except (ConsumerDead, ConsumerNotFound):
                self._reregister()
                continue
            except (OSError, MQError) as exc:
                log.warning("cannot open a consume stream (%s); retrying", exc)
                self._stopping.wait(RETRY_SECONDS)
                continue
            stream.on_answer = self._on_answer
            with self._lock:
                self._stream, self._stale_seen = stream, 0
            try:
                while not self._stopping.is_set() and self.consumer_id == consumer:
                    messages = stream.receive(timeout=0.2)
                    self._note_stream_stale(stream)
                    self._queue_work(messages)
            except (OSError, MQError) as exc:
                if not self._stopping.is_set():
                    log.warning("consume stream lost (%s); reopening", exc)
                    self._stopping.wait(RETRY_SECONDS)
            if not self._stopping.is_set():
                self._close_stream()
            # Stopping: run() closes it once the last acks are on it.

    def _close_stream(self, *, ack_timeout: float = 5.0) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ack_timeout=ack_timeout)
            except Exception as exc:  # already broken: nothing left to flush
                log.debug("closing the consume stream: %s", exc)

    def _on_answer(self, frame: dict[str, Any]) -> None:
        """Answers to the stream's nacks and extensions (fetcher thread)."""
        stale = list(frame.get("stale") or ())
        if frame.get("type") == "extended":
            with self._lock:
                lost = [self._held[r] for r in stale if r in self._held]
                for lease in lost:
                    lease.lost = True
            for lease in lost:
                log.warning("lease of message %s was lost before it could be extended", lease.message.id)
        elif frame.get("type") == "nacked":
            self._note_stale(stale, stale, "nack")

    def _note_stream_stale(self, stream: Stream) -> None:
        """Stale answers to the acks the stream carried (fetcher thread)."""
        new = stream.stale[self._stale_seen :]
        if new:
            self._stale_seen += len(new)
            self._note_stale(new, new)

    def _on_stream(self, send: Callable[[Stream], None]) -> bool:
        """Send on the consume stream, if one is up: whether it went."""
        stream = self._stream
        if stream is None:
            return False
        try:
            send(stream)
            return True
        except Exception as exc:  # the stream is going: the caller uses HTTP
            log.debug("consume stream send failed: %s", exc)
            return False

    # -- handling --------------------------------------------------------------

    def _handle_loop(self) -> None:
        while not self._force.is_set():
            try:
                lease = self._work.get(timeout=0.2)
            except queue_mod.Empty:
                if self._stopping.is_set():
                    return
                continue
            with self._lock:
                if self._stopping.is_set():
                    return  # never started: the stop hands it back
                if lease.message.receipt not in self._held:
                    continue
                lease.started = True
                self._running += 1
            try:
                self._handle(lease)
            finally:
                with self._lock:
                    self._running -= 1
                    self._held.pop(lease.message.receipt, None)
                self._slots.release()
                self._wake.set()

    def _handle(self, lease: _Lease) -> None:
        message = lease.message
        try:
            self.handler(message)
        except Exception as exc:
            delay = self.backoff(message.delivery_count)
            log.warning(
                "handler failed on message %s (delivery %d): %r; retry in %d s",
                message.id,
                message.delivery_count,
                exc,
                delay,
                exc_info=True,
            )
            self._count("failed")
            self._nack(message, delay=delay, reason=f"{type(exc).__name__}: {exc}")
            return
        self._count("processed")
        self._ack(message.receipt)

    def backoff(self, delivery_count: int) -> int:
        """Seconds before a failed message is tried again: doubling from
        ``backoff_base`` with each delivery, at most ``backoff_max``."""
        seconds = self.backoff_base * 2 ** max(0, delivery_count - 1)
        return math.ceil(min(self.backoff_max, seconds))

    def _nack(self, message: Message, **kw: Any) -> None:
        if self._force.is_set():
            return  # everything was released; any answer would be stale
        if self._on_stream(lambda stream: stream.nack_later([message.receipt], **kw)):
            return
        for _attempt in range(3):
            try:
                result = self.client.nack(self.queue, [message.receipt], **kw)
                self._note_stale([message.receipt], result.get("stale", []), "nack")
                return
            except (OSError, MQError) as exc:
                log.warning("nack of message %s failed (%s); retrying", message.id, exc)
                time.sleep(RETRY_SECONDS)

    # -- acks ------------------------------------------------------------------

    def _ack(self, receipt: str) -> None:
        """A finished message's ack. While the fetcher waits for a free slot
        (this handler's, about to be released), the ack rides on its next
        receive; else it goes now. With a consume stream, on it."""
        if self._on_stream(lambda stream: stream.ack([receipt])):
            return
        with self._lock:
            if not self._fetching and not self._stopping.is_set():
                self._deferred.append(receipt)
                return
        self._send_acks([receipt])

    def _send_acks(self, receipts: list[str], *, maybe_acked: bool = False) -> None:
        """Send acks now. A thread that finds none in flight sends these and
        all that gather while it does, a request at a time; the others
        return at once, leaving theirs to it."""
        if not receipts:
            return
        with self._lock:
            self._to_ack += receipts
            if maybe_acked:
                self._maybe_acked.update(receipts)
            if self._acking:
                return
            self._acking = True
        try:
            while True:
                with self._lock:
                    batch, self._to_ack = self._to_ack, []
                    if not batch:
                        self._acking = False
                        return
                self._post_acks(batch)
        except BaseException:
            with self._lock:
                self._acking = False
            raise

    def _post_acks(self, receipts: list[str]) -> None:
        if self._force.is_set():
            return  # everything was released; any answer would be stale
        for _attempt in range(3):
            try:
                result = self.client.ack(self.queue, receipts)
                self._note_stale(receipts, result.get("stale", []))
                return
            except (OSError, MQError) as exc:
                log.warning("ack of %d message(s) failed (%s); retrying", len(receipts), exc)
                with self._lock:
                    self._maybe_acked.update(receipts)
                time.sleep(RETRY_SECONDS)

    def _flush_acks(self) -> None:
        """Before leaving: send the acks that waited for a receive, and wait
        for any in flight (leaving would hand their messages to others)."""
        with self._lock:
            deferred, self._deferred = self._deferred, []
        self._send_acks(deferred)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self._lock:
                if not self._acking and not self._to_ack:
                    return
            time.sleep(0.01)

    def _note_stale(self, sent: list[str], stale: list[str], verb: str = "ack") -> None:
        """Count the stale answers of a request that landed (on ``sent``)."""
        with self._lock:
            lost = [r for r in stale if r not in self._maybe_acked]
            self._maybe_acked.difference_update(sent)
            self.stats["stale"] += len(lost)
        for receipt in lost:
            log.warning(
                "%s of message %s was stale: its lease had been handed to another consumer", verb, receipt.split(".")[0]
            )

    def _hand_back_unstarted(self) -> None:
        """On a graceful stop, messages fetched but not started go back at
        once (as failed deliveries) instead of waiting for our leave."""
        with self._lock:
            unstarted = [r for r, lease in self._held.items() if not lease.started]
            for receipt in unstarted:
                del self._held[receipt]
        if unstarted:
            try:
                self.client.clone().nack(self.queue, unstarted, reason="worker shutting down")
            except (OSError, MQError) as exc:
                log.warning("could not hand back %d unstarted messages (%s)", len(unstarted), exc)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _idle(self) -> bool:
        with self._lock:
            return self._running == 0 and not any(lease.started for lease in self._held.values())

    # -- heartbeats and lease extension ----------------------------------------

    def _keep_loop(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_interval
        tick = max(0.1, min(self.heartbeat_interval, self.lease_seconds * EXTEND_WHEN_LEFT / 2))
        while not self._force.wait(tick):
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                self._beat()
            self._extend_due(now)
            if self._stopping.is_set() and self._idle():
                return

    def _beat(self) -> None:
        consumer_id = self.consumer_id
        if consumer_id is None:
            return
        try:
            self.client.heartbeat(consumer_id)
        except (ConsumerDead, ConsumerNotFound):
            if not self._stopping.is_set():
                with self._lock:
                    for lease in self._held.values():
                        lease.lost = True
                self._reregister()
        except (OSError, MQError) as exc:
            log.warning("heartbeat failed (%s); the server will suspect us if this lasts", exc)

    def _extend_due(self, now: float) -> None:
        margin = self.lease_seconds * EXTEND_WHEN_LEFT
        with self._lock:
            due = [lease for lease in self._held.values() if not lease.lost and lease.expires - now < margin]
        if not due:
            return
        started = time.monotonic()
        receipts = [lease.message.receipt for lease in due]
        if self._on_stream(lambda stream: stream.extend_later(receipts, self.lease_seconds)):
            for lease in due:  # a stale one is marked lost when its answer comes
                lease.expires = started + self.lease_seconds
                self._count("extended")
            return
        try:
            result = self.client.extend(self.queue, receipts, self.lease_seconds)
        except (OSError, MQError) as exc:
            log.warning("lease extension failed (%s); retrying", exc)
            return
        stale = set(result.get("stale", []))
        for lease in due:
            if lease.message.receipt in stale:
                lease.lost = True
                log.warning("lease of message %s was lost before it could be extended", lease.message.id)
            else:
                lease.expires = started + self.lease_seconds
                self._count("extended")
