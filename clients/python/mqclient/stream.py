"""Streams over a websocket. ``Client.consume``: the server pushes
deliveries as they come, up to ``prefetch`` unacked at a time, and acks go
back on the same connection. ``Client.publisher``: batches are sent without
waiting for each answer, up to ``window`` unanswered. Both need the
``websockets`` package (``pip install 'mqclient[stream]'``); the rest of
mqclient needs nothing."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from .errors import MQError, error_for
from .records import Message

_ACKS = "acks"  # _read's reply: the answer to acks


class StreamClosed(MQError):
    """The server closed the stream (or the connection broke)."""


class Server(Protocol):
    """What a stream uses of its ``Client``: the stream's URL, the token and
    the timeout."""

    token: str
    timeout: float

    def websocket_url(self, queue: str, kind: str, params: dict[str, Any]) -> str: ...


def _connect(client: Server, queue: str, kind: str, params: dict[str, Any]) -> Any:
    """The websocket of a ``kind`` stream on ``queue`` (a context manager)."""
    try:
        from websockets.sync.client import connect
    except ImportError:
        raise ImportError("mqclient's streams need the websockets package: pip install 'mqclient[stream]'") from None
    return connect(
        client.websocket_url(queue, kind, params),
        additional_headers={"Authorization": f"Bearer {client.token}"},
        compression=None,
        open_timeout=client.timeout,
        max_size=None,
    )


def _opened(ws: Any, timeout: float) -> dict[str, Any]:
    """The server's first frame: ``ready``, or the error that refused the
    stream (raised here, not at the first read)."""
    from websockets.exceptions import ConnectionClosed

    try:
        frame: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    except TimeoutError:
        raise StreamClosed(504, "stream_not_ready", f"The server did not open the stream within {timeout:g} s.") from None
    except ConnectionClosed as exc:
        raise _closed(exc, None) from None
    if frame.get("type") == "error":
        raise _error(int(frame.get("status", 400)), frame.get("error") or {})
    return frame


def _closed(exc: Any, error: MQError | None) -> MQError:
    """What to raise when the server closed a stream: the error it sent
    before closing, else one made of the close code."""
    if error is not None:
        return error
    code = exc.rcvd.code if exc.rcvd is not None else 1006
    return StreamClosed(code - 4000 if 4000 <= code < 5000 else 503, "stream_closed", f"The server closed the stream ({code}).")


def _error(status: int, error: dict[str, Any]) -> MQError:
    return error_for(status, str(error.get("code", "error")), str(error.get("message", "")))


class Stream:
    """``with client.consume("orders", prefetch=10) as stream:``
    ``for message in stream: ...; stream.ack([message.receipt])``.

    One thread reads (iterates, ``receive``, ``nack``, ``extend``); others
    may ``ack``, ``nack_later`` and ``extend_later`` meanwhile. ``acked``
    counts the acks the server applied; ``stale`` lists the receipts it
    found stale."""

    def __init__(
        self,
        client: Server,
        queue: str,
        *,
        prefetch: int = 10,
        visibility_timeout: int | None = None,
        consumer: str | None = None,
    ) -> None:
        params: dict[str, Any] = {"prefetch": prefetch}
        if visibility_timeout is not None:
            params["visibility_timeout"] = visibility_timeout
        if consumer is not None:
            params["consumer"] = consumer
        self.queue = queue
        self.acked = 0
        self.stale: list[str] = []
        # Called by the reading thread with the answers of nack_later and
        # extend_later.
        self.on_answer: Callable[[dict[str, Any]], None] | None = None
        self._acks_sent = 0
        self._sent_lock = threading.Lock()
        self._messages: deque[Message] = deque()
        self._error: MQError | None = None
        self._stack = ExitStack()
        self._ws = self._stack.enter_context(_connect(client, queue, "consume", params))
        try:
            # What the server granted: prefetch, visibility_timeout, consumer.
            self.settings = _opened(self._ws, client.timeout)
        except BaseException:
            self._stack.close()
            raise

    # -- reading -------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> list[Message]:
        """The messages delivered so far, waiting up to ``timeout`` seconds
        (None: until some come) when none are; [] when none came in time."""
        if not self._messages:
            self._read(timeout)
        out = list(self._messages)
        self._messages.clear()
        return out

    def __iter__(self) -> Iterator[Message]:
        """Each message as it is delivered, forever (until the stream closes)."""
        while True:
            while not self._messages:
                self._read(None)
            yield self._messages.popleft()

    def _read(self, timeout: float | None, reply: str | None = None) -> dict[str, Any] | None:
        """Read frames until messages come (or, with ``reply``, that answer);
        None on timeout."""
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                raw = self._ws.recv(timeout=timeout)
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                raise _closed(exc, self._error) from None
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "messages":
                self.acked += len(frame.get("acked") or ())
                self.stale += frame.get("stale") or ()
                self._messages.extend(Message.from_api(self.queue, m) for m in frame["messages"])
                if (reply is None and self._messages) or (reply == _ACKS and "acked" in frame):
                    return frame
            elif kind == "error":
                error = _error(int(frame.get("status", 400)), frame.get("error") or {})
                if error.status in (400, 422) or reply is not None:
                    raise error  # an answer to a frame of ours
                self._error = error  # the stream's end: raised when it closes
            elif kind == reply:
                return frame
            elif self.on_answer is not None:
                self.on_answer(frame)  # the answer to a nack_later or extend_later

    # -- writing -------------------------------------------------------------

    def ack(self, receipts: list[str]) -> None:
        """Acknowledge; the answer comes with the next delivery (``acked``,
        ``stale``). Frees ``len(receipts)`` of the prefetch window. Safe
        from another thread than the one reading."""
        with self._sent_lock:
            self._ws.send(json.dumps({"type": "ack", "receipts": receipts}))
            self._acks_sent += len(receipts)

    def nack(self, receipts: list[str], *, delay: int = 0, reason: str = "") -> dict[str, list[str]]:
        """Give messages back as failed; ``{"nacked": [ids], "stale": [receipts]}``."""
        self._ws.send(json.dumps({"type": "nack", "receipts": receipts, "delay": delay, "reason": reason[:2000]}))
        return self._answer("nacked")

    def extend(self, receipts: list[str], visibility_timeout: int) -> dict[str, Any]:
        """Push the leases to now + ``visibility_timeout``."""
        self._ws.send(json.dumps({"type": "extend", "receipts": receipts, "visibility_timeout": visibility_timeout}))
        return self._answer("extended")

    def nack_later(self, receipts: list[str], *, delay: int = 0, reason: str = "") -> None:
        """``nack`` without waiting: its answer (``{"type": "nacked", ...}``)
        goes to ``on_answer`` when the stream next reads. Safe from another
        thread than the one reading."""
        self._ws.send(json.dumps({"type": "nack", "receipts": receipts, "delay": delay, "reason": reason[:2000]}))

    def extend_later(self, receipts: list[str], visibility_timeout: int) -> None:
        """``extend`` without waiting, as ``nack_later``."""
        self._ws.send(json.dumps({"type": "extend", "receipts": receipts, "visibility_timeout": visibility_timeout}))

    def _answer(self, kind: str) -> dict[str, Any]:
        frame = self._read(None, reply=kind)
        assert frame is not None
        frame.pop("type", None)
        return frame

    def close(self, *, ack_timeout: float = 5.0) -> None:
        """Close the stream, once the acks sent on it are answered (at most
        ``ack_timeout`` seconds): when it returns they are applied, and what
        the stream still held is ready again for other consumers. From the
        reading thread, or once no thread reads."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + ack_timeout
        try:
            while self.acked + len(self.stale) < self._acks_sent:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._read(left, reply=_ACKS)  # buffers what deliveries come meanwhile
        except (ConnectionClosed, MQError, OSError):
            pass  # gone: what was not answered is settled by the server
        self._stack.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


@dataclass
class Sent:
    """The answer to one batch a ``Publisher`` sent: ``messages`` (``[{"id",
    "duplicate"}]`` in input order) once committed, or the ``error`` that
    refused it (nothing of that batch was enqueued)."""

    batch: int  # what send_batch returned
    messages: list[dict[str, Any]] | None = None
    error: MQError | None = None


class Publisher:
    """``with client.publisher("orders", window=8) as pub:``
    ``pub.send_batch([...]); ...; answers = pub.flush()``.

    ``send_batch`` returns as soon as the batch is on its way, unless
    ``window`` batches are unanswered: then it waits for the oldest answer.
    A batch is all or nothing, as ``Client.send_batch``; its answer comes
    after its commit. Batches that reach the server while it commits others
    are committed together (fewer commits for the same messages). Not
    thread-safe."""

    def __init__(self, client: Server, queue: str, *, window: int = 8) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.queue = queue
        self.window = window
        self._next = 0
        self._unanswered: deque[int] = deque()
        self._answers: list[Sent] = []
        self._error: MQError | None = None
        self._stack = ExitStack()
        self._ws = self._stack.enter_context(_connect(client, queue, "publish", {}))
        try:
            _opened(self._ws, client.timeout)
        except BaseException:
            self._stack.close()
            raise

    def send_batch(self, messages: list[dict[str, Any]]) -> int:
        """Send up to 1000 messages (as ``Client.send_batch``); returns the
        batch's number, which its ``Sent`` answer carries."""
        while len(self._unanswered) >= self.window:
            self._read()
        number = self._next
        self._next += 1
        self._ws.send(json.dumps({"type": "send", "id": number, "messages": messages}))
        self._unanswered.append(number)
        return number

    def send(self, body: Any, **fields: Any) -> int:
        """One message (``priority``, ``delay``, ``group``, ``dedup_id``,
        ``headers`` as for ``Client.send``) as a batch of one."""
        return self.send_batch([{"body": body, **fields}])

    def flush(self) -> list[Sent]:
        """Wait for every batch's answer; returns those not returned before,
        in the order sent."""
        while self._unanswered:
            self._read()
        out, self._answers = self._answers, []
        return out

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            frame = json.loads(self._ws.recv())
        except ConnectionClosed as exc:
            raise _closed(exc, self._error) from None
        number = frame.get("id")
        if frame.get("type") == "error" and number is None:
            self._error = _error(int(frame.get("status", 400)), frame.get("error") or {})
            return  # the stream's end: raised when it closes
        if number in self._unanswered:
            self._unanswered.remove(number)
        if frame.get("type") == "sent":
            self._answers.append(Sent(number, messages=frame["messages"]))
        else:
            self._answers.append(Sent(number, error=_error(int(frame.get("status", 400)), frame.get("error") or {})))

    def close(self) -> None:
        """Close the stream. Batches sent before are still committed, but
        their answers are not waited for: ``flush`` first to know them."""
        self._stack.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
