"""``/api/v1/queues/{name}/publish``: the producer's stream (``stream.py``
has what streams share). Send frames are answered in order, after their
commit; frames that arrive while a commit runs are written together in the
next one (one INSERT, one commit: a group commit); should that fail, each is
tried on its own, so one frame's error (a message too large, a full queue)
is only its own. Frames received before the client went are still written.

Each frame is parsed and validated as it arrives, on a thread of the
stream's own beside the one that commits: the next commit's frames are ready
when the last commit returns, instead of being parsed after it while
PostgreSQL waits (docs/performance.md has what it gains)."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from django.db import connection

from .. import broker
from ..exceptions import MQError
from ..models import Queue, Scope
from .frames import FrameId, error_frame, frame_id, parse_send
from .stream import MAX_PENDING_FRAMES, Send, Stream
from .views import new_messages

# Send frames one commit takes at most.
FRAMES_PER_COMMIT = 16


class Parsed(NamedTuple):
    """A send frame as the parsing thread leaves it: its id, and its
    messages as the broker takes them, or the error that answers it."""

    id: FrameId
    messages: list[broker.NewMessage]
    error: MQError | None = None


def parse(batch: list[str | bytes]) -> list[Parsed]:
    """Send frames parsed and validated, in order."""
    parsed = []
    for data in batch:
        try:
            frame = parse_send(data)
        except MQError as exc:
            parsed.append(Parsed(frame_id(data), [], exc))
            continue
        parsed.append(Parsed(frame.id, new_messages(frame.messages)))
    return parsed


class PublishStream(Stream):
    """``/publish``: send frames answered in order, written in group commits."""

    kind = "publish"
    scope_needed = Scope.PRODUCE

    def __init__(self, name: str, executor: ThreadPoolExecutor, send: Send) -> None:
        super().__init__(name, executor, send)
        self.arrived: deque[str | bytes] = deque()  # not parsed yet
        self.frames: deque[Parsed] = deque()  # parsed, for the next commit
        self.parser = ThreadPoolExecutor(1, thread_name_prefix="stream-parse")
        # A context of its own: one context cannot be entered by two threads at once.
        self.parser_context = self.context.copy()
        self.parsing: asyncio.Future[None] | None = None
        self.parse_failed: Exception | None = None

    async def on_frame(self, data: str | bytes) -> None:
        # Parsed on the stream's parsing thread, not on the loop.
        self.arrived.append(data)
        if self.parsing is None:
            self.parsing = asyncio.ensure_future(self.parse_arrived())
        await self.backpressure(len(self.arrived) + len(self.frames) >= MAX_PENDING_FRAMES)

    async def parse_arrived(self) -> None:
        """Parse what arrived, in order, until nothing more has; each chunk
        is ready for the pump as soon as it is parsed."""
        try:
            while self.arrived:
                chunk = list(self.arrived)
                self.arrived.clear()
                parsed = await asyncio.get_running_loop().run_in_executor(self.parser, self.parser_context.run, parse, chunk)
                self.frames.extend(parsed)
                self.wake.set()
        except Exception as exc:
            self.parse_failed = exc  # the pump ends the stream with it
        finally:
            self.parsing = None
            self.wake.set()

    async def finish(self, pump: asyncio.Future[None]) -> None:
        """The client went: what it sent is still written (nobody hears the
        answers), then the pump ends."""
        self.wake.set()
        try:
            await pump
        finally:
            self.parser.shutdown(wait=False)

    def done(self) -> bool:
        return self.gone and self.parsing is None and not self.frames and self.parse_failed is None

    async def step(self) -> None:
        if self.parse_failed is not None:
            raise self.parse_failed
        if not self.frames:
            self.wake.clear()
            await self.wake.wait()
            return
        batch = [self.frames.popleft() for _ in range(min(FRAMES_PER_COMMIT, len(self.frames)))]
        self.drained.set()
        queue = await self.fresh_queue()
        for answer in await self.in_thread(self.write, queue, batch):
            await self.send(answer)

    # -- on the stream's thread ----------------------------------------------

    def write(self, queue: Queue, batch: list[Parsed]) -> list[dict[str, Any]]:
        """The answers to ``batch``'s frames, in order: the valid ones are
        written in one commit (or each on its own, should that fail)."""
        answers: list[dict[str, Any]] = []
        good: list[tuple[int, Parsed]] = []
        for frame in batch:
            if frame.error is not None:
                answers.append(error_frame(frame.error, frame.id))
                continue
            good.append((len(answers), frame))
            answers.append({})
        try:
            if good:
                self._publish(queue, good, answers)
        finally:
            connection.close()
        return answers

    def _publish(self, queue: Queue, good: list[tuple[int, Parsed]], answers: list[dict[str, Any]]) -> None:
        try:
            results = broker.publish(queue, [m for _, frame in good for m in frame.messages])
        except MQError as exc:
            if len(good) == 1:
                answers[good[0][0]] = error_frame(exc, good[0][1].id)
            else:
                for one in good:  # so that an error is only its own frame's
                    self._publish(queue, [one], answers)
            return
        at = 0
        for i, frame in good:
            answer: dict[str, Any] = {"type": "sent", "messages": [r.to_dict() for r in results[at : at + len(frame.messages)]]}
            if frame.id is not None:
                answer["id"] = frame.id
            answers[i] = answer
            at += len(frame.messages)
