"""Streams: consuming and producing over a websocket. The broker pushes
deliveries to a held connection, as RabbitMQ pushes to a consumer with a
prefetch window; a producer sends without waiting for each answer. The
frames each side sends are in ``frames.py``.

``/api/v1/queues/{name}/consume`` holds at most ``prefetch`` unacked
messages: a slot frees when its receipt is acked or nacked, or its lease
expires. The acks that arrive while a claim runs ride on the next one, in
its statement on PostgreSQL (as a receive's ``"ack"``): a busy stream claims
and acks in batches on its own. Between deliveries it waits in the broker's
one long-poll loop, where a send in this process may hand it messages.
When the stream closes, the acks it sent are applied and what it still
holds is ready again at once, each a redelivery (a consumer's leave).

``/api/v1/queues/{name}/publish`` is ``publish_stream.py``.

Served by plain ASGI apps, not Channels consumers: Channels gives every
frame a thread hand-off to close old connections, and a stream does its
database work on one thread of its own, which gives its connection back to
the pool after each statement. On PostgreSQL a busy consume stream's small
looks (a round trip, a window of a few) run on the event loop instead, over
an asynchronous connection of the stream's own (``look_on_loop``)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
import psycopg
from django.conf import settings
from django.db import connection
from prometheus_client import Gauge
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from .. import broker, notify
from ..exceptions import MQError
from ..metrics import REGISTRY
from ..models import Queue, Scope, epoch_to_iso
from .auth import allowed, authenticate, lately_verified
from .errors import invalid, log_rejection
from .frames import (
    AckFrame,
    ConsumeIn,
    ExtendFrame,
    NackFrame,
    PublishIn,
    as_mq_error,
    error_frame,
    parse_frame,
)

log = logging.getLogger("queues.api")

T = TypeVar("T")
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

# A refused or failed stream closes with this plus the HTTP status of its
# error (4401, 4403, 4404, 4503...); 1011 when something broke on our side.
CLOSE_BASE = 4000
CLOSE_INTERNAL = 1011
# Acks one look applies at most (as a receive's "ack"); and how many may
# wait unapplied before the stream stops reading the client's frames.
ACKS_PER_LOOK = 1000
MAX_PENDING_ACKS = 10_000
# Frames (nacks and extends, or sends) that may wait unanswered before the
# stream stops reading the client's frames.
MAX_PENDING_FRAMES = 64
# On PostgreSQL a busy consume stream claims a few messages at a time on the
# event loop, over a connection of its own (see ConsumeStream.look_on_loop);
# at most MQ_STREAM_DB_CONNECTIONS (a setting) such connections per process,
# the other streams claim on their threads over the pool. One gives up its
# connection after QUIET_SECONDS without a delivery.
LOOP_LOOK_MAX = 20
QUIET_SECONDS = 10.0
# Longest wait of an idle stream between two looks: its process's watch
# (``notify``) wakes it when something may be claimed, so it need not look
# on its own; one that holds a connection looks again after QUIET_SECONDS,
# to notice that it is quiet and give the connection back.
IDLE_ROUND_SECONDS = 20.0
# Longest wait of a full stream (no credit) before it counts its held leases
# again: one that ran out frees credit.
FULL_RECHECK_SECONDS = 1.0
_loop_connections = 0

OPEN_STREAMS = Gauge("mq_streams", "Streams (websockets) open in this process.", ["kind"], registry=REGISTRY)


class SocketApp:
    """The ASGI app of one kind of stream (websocket) at
    ``/api/v1/queues/{name}/<kind>``."""

    def __init__(self, stream: type[Stream]) -> None:
        self.stream = stream

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        executor = ThreadPoolExecutor(1, thread_name_prefix="stream")
        stream = self.stream(scope["url_route"]["kwargs"]["name"], executor, send)
        try:
            try:
                await stream.open(scope)
            except Exception as exc:
                error = as_mq_error(exc)
                if error is None:
                    log.exception("could not open a stream at %s", scope.get("path"))
                else:
                    log_rejection(error.status, error.code, "WEBSOCKET", scope.get("path", ""), error.message)
                await send({"type": "websocket.accept"})
                await stream.close_with(error)
                return
            await send({"type": "websocket.accept"})
            await stream.send({"type": "ready", "queue": stream.name, **stream.settings()})
            gauge = OPEN_STREAMS.labels(stream.kind)
            gauge.inc()
            try:
                await stream.run(receive)
            finally:
                gauge.dec()
        finally:
            await stream.in_thread(close_connection)
            executor.shutdown(wait=False)


class Stream:
    """What both kinds share: the opening checks, the stream's own thread
    (its database connection lives there), the pump that does the database
    work while the client's frames are read, frames out."""

    kind = ""
    scope_needed = ""
    options: type[BaseModel] = PublishIn

    def __init__(self, name: str, executor: ThreadPoolExecutor, send: Send) -> None:
        self.name = name
        self.executor = executor
        self._send = send
        self.queue: Queue | None = None
        self.wake = asyncio.Event()  # a frame came in
        self.drained = asyncio.Event()  # the frames waiting fell under their limit
        self.gone = False  # the client went
        self.failed = False  # the pump ended the stream
        self.context = contextvars.copy_context()

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """On the stream's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.context.run, fn, *args)

    # -- opening -------------------------------------------------------------

    async def open(self, scope: dict[str, Any]) -> None:
        """Authenticate and check what the stream asks for; raises MQError."""
        address = (scope.get("client") or ["unknown"])[0] or "unknown"
        token = await self._token(scope, address)
        allowed(token, self.scope_needed, self.name)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            self.configure(self.options.model_validate(query))
        except PydanticValidationError as exc:
            raise invalid(exc.errors()) from None
        await self.fresh_queue()

    def configure(self, options: Any) -> None:
        """Take the validated query parameters."""

    def settings(self) -> dict[str, Any]:
        """What the ``ready`` frame tells the client it got."""
        return {}

    async def _token(self, scope: dict[str, Any], address: str) -> Any:
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), "")
        token = lately_verified(header)
        return token if token is not None else await self.in_thread(authenticate, header, address)

    async def fresh_queue(self) -> Queue:
        """The stream's queue, looked up again (pause, config, deletion)
        through the process's cache."""
        self.queue = await broker.aget_queue(self.name)
        return self.queue

    # -- running -------------------------------------------------------------

    async def run(self, receive: Receive) -> None:
        """Read the client's frames while the pump works, until the client
        goes; then ``finish``."""
        pump = asyncio.ensure_future(self.pump())
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] == "websocket.receive" and not self.failed:
                    await self.on_frame(message.get("text") or message.get("bytes") or b"")
        finally:
            self.gone = True
            await self.finish(pump)

    async def on_frame(self, data: str | bytes) -> None:
        raise NotImplementedError

    async def finish(self, pump: asyncio.Future[None]) -> None:
        raise NotImplementedError

    async def pump(self) -> None:
        try:
            while not self.done():
                await self.step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = as_mq_error(exc)
            if error is None:
                log.exception("%s stream on %s failed", self.kind, self.name)
            self.failed = True
            await self.close_with(error)

    def done(self) -> bool:
        return False

    async def step(self) -> None:
        raise NotImplementedError

    async def backpressure(self, full: bool) -> None:
        """Stop reading the client's frames while what waits for the pump is
        ``full`` (until the pump sets ``drained``): TCP then slows the client
        down."""
        if full:
            self.drained.clear()
            await self.drained.wait()

    async def send(self, frame: dict[str, Any]) -> None:
        if not self.gone:
            await self._send({"type": "websocket.send", "text": orjson.dumps(frame).decode()})

    async def close_with(self, error: MQError | None) -> None:
        if error is not None:
            await self.send(error_frame(error))
        await self._send({"type": "websocket.close", "code": CLOSE_BASE + error.status if error else CLOSE_INTERNAL})


class ConsumeStream(Stream):
    """``/consume``: deliveries pushed up to the prefetch window."""

    kind = "consume"
    scope_needed = Scope.CONSUME
    options = ConsumeIn

    def __init__(self, name: str, executor: ThreadPoolExecutor, send: Send) -> None:
        super().__init__(name, executor, send)
        self.prefetch = 10
        self.visibility_timeout: int | None = None
        self.consumer: str | None = None
        # What the client holds: receipt -> lease expiry (epoch seconds).
        self.held: dict[str, float] = {}
        self.acks: list[str] = []
        self.ops: deque[NackFrame | ExtendFrame] = deque()
        self.waiter: notify.Waiter | None = None
        # The stream's own connection for looks on the loop (PostgreSQL),
        # the look running now, and since when looks have found nothing.
        self.db: psycopg.AsyncConnection[Any] | None = None
        self.looking: asyncio.Task[Any] | None = None
        self.quiet_since: float | None = None

    def configure(self, options: ConsumeIn) -> None:
        self.prefetch = options.prefetch
        self.visibility_timeout = options.visibility_timeout
        self.consumer = options.consumer

    def settings(self) -> dict[str, Any]:
        assert self.queue is not None
        vt = self.queue.visibility_timeout if self.visibility_timeout is None else self.visibility_timeout
        return {"prefetch": self.prefetch, "visibility_timeout": vt, "consumer": self.consumer}

    async def open(self, scope: dict[str, Any]) -> None:
        await super().open(scope)
        if self.consumer is not None:
            await self.in_thread(broker.check_consumer, self.consumer)

    async def on_frame(self, data: str | bytes) -> None:
        try:
            self.take(parse_frame(data))
        except MQError as exc:
            await self.send(error_frame(exc))
        await self.backpressure(self.full())

    def full(self) -> bool:
        return len(self.acks) >= MAX_PENDING_ACKS or len(self.ops) >= MAX_PENDING_FRAMES

    async def finish(self, pump: asyncio.Future[None]) -> None:
        """The client went: the pump stops (what a look it was running
        leases is released as never delivered), then ``settle``."""
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        if self.looking is not None:
            # A look the hang-up cut short still runs on our connection; it
            # releases what it leases when done (broker.unlost).
            await asyncio.wait([self.looking])
        await self.close_db()
        await self.in_thread(self.settle)

    def take(self, frame: AckFrame | NackFrame | ExtendFrame) -> None:
        """A client's frame: applied by the pump at its next look."""
        if isinstance(frame, AckFrame):
            self.acks += frame.receipts
        else:
            self.ops.append(frame)
        if not isinstance(frame, ExtendFrame):
            for receipt in frame.receipts:
                self.held.pop(receipt, None)  # its slot is free, whatever the verdict
        self.wake.set()
        if self.waiter is not None:
            self.waiter.interrupt()

    def credit(self) -> int:
        """How many more messages the stream may hold now."""
        now = time.time()
        for receipt in [r for r, expires in self.held.items() if expires <= now]:
            del self.held[receipt]  # the lease ran out: the message went back
        return self.prefetch - len(self.held)

    async def step(self) -> None:
        """One round: nacks and extends, then a look that applies the acks
        and claims what the credit allows, or a wait for a frame, a wake-up
        or a send's hand-off."""
        while self.ops:
            op = self.ops.popleft()
            if not self.full():
                self.drained.set()
            frame, expires = await self.in_thread(self.apply, op)
            if expires is not None:
                stale = set(frame["stale"])
                for receipt in op.receipts:
                    if receipt in self.held and receipt not in stale:
                        self.held[receipt] = expires
            await self.send(frame)
        acks, self.acks = self.acks[:ACKS_PER_LOOK], self.acks[ACKS_PER_LOOK:]
        if not self.full():
            self.drained.set()
        queue = await self.fresh_queue()
        credit = self.credit()
        if credit <= 0:
            if acks:
                await self.deliver([], await self.in_thread(self.ack, queue, acks))
            elif not self.pending():
                await self.idle()
            return
        credit = min(credit, broker.MAX_RECEIVE)
        offer = notify.Offer(credit, self.visibility_timeout, self.consumer)

        async def look(queue: Queue, _looks: int) -> broker.Received:
            if self.look_on_loop(queue, credit, len(acks)):
                self.looking = asyncio.ensure_future(self.look_here(queue, acks, credit))
                try:
                    received = await asyncio.shield(self.looking)
                finally:
                    self.looking = None
            else:
                received = await self.in_thread(self.look, queue, acks, credit)
            await self.note_quiet(bool(received.deliveries))
            return received

        received = await broker.long_poll(
            queue,
            look,
            offer=offer,
            wait=QUIET_SECONDS if self.db is not None else IDLE_ROUND_SECONDS,
            may_wait=lambda got: got.acked is None and not self.pending(),
            once=True,
            on_wait=self.waiting,
        )
        if received.deliveries or received.acked is not None:
            await self.deliver(received.deliveries, received.acked)

    def waiting(self, waiter: notify.Waiter | None) -> None:
        """The waiter a frame interrupts (``take``), while the stream waits."""
        self.waiter = waiter

    def pending(self) -> bool:
        return bool(self.acks or self.ops)

    # -- looks on the loop (PostgreSQL) ----------------------------------------

    def look_on_loop(self, queue: Queue, credit: int, acks: int) -> bool:
        """Whether this look runs on the event loop, over the stream's own
        connection, instead of on the stream's thread over the pool: on
        PostgreSQL, for a queue that is neither FIFO nor paused (those take
        the broker's general path), for a small look (a round trip, a window
        of a few: up to LOOP_LOOK_MAX claimed and acked each), while the
        stream is busy and this process holds fewer than
        ``MQ_STREAM_DB_CONNECTIONS`` such connections. It is the same statement
        without two thread hand-offs (docs/performance.md has what it gains).
        A batch of 100 gains nothing so, and with four streams lost 10 %:
        its rows are read on the loop, among everyone's frames."""
        if credit > LOOP_LOOK_MAX or acks > LOOP_LOOK_MAX:
            return False
        if not broker.one_statement(queue):
            return False
        if self.db is not None:
            return True
        return self.quiet_since is None and _loop_connections < settings.MQ_STREAM_DB_CONNECTIONS

    async def look_here(self, queue: Queue, acks: list[str], credit: int) -> broker.Received:
        """``look`` on the loop, over the stream's own connection."""
        global _loop_connections
        if self.db is None:
            _loop_connections += 1
            try:
                conninfo = {k: v for k, v in connection.get_connection_params().items() if k not in ("cursor_factory", "context")}
                self.db = await psycopg.AsyncConnection.connect(autocommit=True, **conninfo)
            except BaseException:
                _loop_connections -= 1
                raise
        try:
            return await broker.areceive_on(
                self.db, queue, acks, max_messages=credit, visibility_timeout=self.visibility_timeout, consumer_id=self.consumer
            )
        except BaseException:
            await self.close_db()  # in an unknown state: the next look connects afresh
            raise

    async def note_quiet(self, delivered: bool) -> None:
        """A stream whose looks have found nothing for QUIET_SECONDS gives its
        connection back; its rechecks go to its thread and the pool until a
        look delivers again."""
        if delivered:
            self.quiet_since = None
            return
        now = time.monotonic()
        if self.quiet_since is None:
            self.quiet_since = now
        elif now - self.quiet_since >= QUIET_SECONDS:
            await self.close_db()

    async def close_db(self) -> None:
        global _loop_connections
        db, self.db = self.db, None
        if db is not None:
            _loop_connections -= 1
            try:
                await db.close()
            except Exception:
                log.warning("closing a consume stream's connection failed", exc_info=True)

    async def idle(self) -> None:
        """Full: wait for a frame, or for the first held lease to run out."""
        self.wake.clear()
        first = min(self.held.values(), default=time.time() + FULL_RECHECK_SECONDS)
        try:
            await asyncio.wait_for(self.wake.wait(), max(0.0, min(first - time.time(), FULL_RECHECK_SECONDS)) + 0.001)
        except TimeoutError:
            pass

    async def deliver(self, deliveries: list[broker.Delivery], acked: broker.ReceiptResult | None) -> None:
        for d in deliveries:
            self.held[d.receipt] = d.lease_expires_at
        frame: dict[str, Any] = {"type": "messages", "messages": [d.to_dict() for d in deliveries]}
        if acked is not None:
            frame |= {"acked": acked.done, "stale": acked.stale}
        await self.send(frame)

    # -- on the stream's thread ----------------------------------------------

    def look(self, queue: Queue, acks: list[str], credit: int) -> broker.Received:
        options: dict[str, Any] = {"max_messages": credit, "visibility_timeout": self.visibility_timeout, "consumer_id": self.consumer}
        try:
            if acks:
                return broker.Received(*broker.ack_and_receive(queue, acks, **options))
            return broker.Received(broker.receive(queue, **options))
        finally:
            connection.close()  # back to the pool: an idle stream holds none

    def ack(self, queue: Queue, acks: list[str]) -> broker.ReceiptResult:
        try:
            return broker.ack(queue, acks)
        finally:
            connection.close()

    def apply(self, op: NackFrame | ExtendFrame) -> tuple[dict[str, Any], float | None]:
        """A nack or an extend: its answer frame (an error frame for a
        refusal, such as the queue being gone), and for an extend the new
        lease expiry (for the loop's ``held``)."""
        assert self.queue is not None
        try:
            if isinstance(op, NackFrame):
                result = broker.nack(self.queue, op.receipts, delay=op.delay, reason=op.reason)
                return {"type": "nacked", "nacked": result.done, "stale": result.stale}, None
            result, expires = broker.extend(self.queue, op.receipts, op.visibility_timeout)
            frame = {"type": "extended", "extended": result.done, "stale": result.stale, "lease_expires_at": epoch_to_iso(expires)}
            return frame, expires
        except MQError as exc:
            return error_frame(exc), None
        finally:
            connection.close()

    def settle(self) -> None:
        """The client is gone: its acks and nacks are applied, and what it
        still holds is ready again at once."""
        queue = self.queue
        if queue is None:
            return
        try:
            if self.acks:
                broker.ack(queue, self.acks)
            for op in self.ops:
                if isinstance(op, NackFrame):
                    broker.nack(queue, op.receipts, delay=op.delay, reason=op.reason)
            if self.held:
                n = broker.release(queue, list(self.held), reason="consume stream closed")
                log.info("a consume stream on %s closed holding %d message(s): back to ready", queue.name, n)
        except Exception:
            log.exception("could not settle a closed consume stream on %s; what it held returns at its visibility timeout", queue.name)
        finally:
            connection.close()


def close_connection() -> None:
    connection.close()  # the calling thread's
