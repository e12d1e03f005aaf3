"""``/api/v1/queues/{name}/publish``: the producer's stream (``stream.py``
has what streams share). Send frames are answered in order, after their
commit; frames that arrive while a commit runs are written together in the
next one (one INSERT, one commit: a group commit); should that fail, each is
tried on its own, so one frame's error (a message too large, a full queue)
is only its own. Frames received before the client went are still written."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import connection

from .. import broker
from ..exceptions import MQError
from ..models import Queue, Scope
from .frames import SendFrame, error_frame, frame_id, parse_send
from .stream import MAX_PENDING_FRAMES, Send, Stream
from .views import new_messages

# Send frames one commit takes at most.
FRAMES_PER_COMMIT = 16


class PublishStream(Stream):
    """``/publish``: send frames answered in order, written in group commits."""

    kind = "publish"
    scope_needed = Scope.PRODUCE

    def __init__(self, name: str, executor: ThreadPoolExecutor, send: Send) -> None:
        super().__init__(name, executor, send)
        self.frames: deque[str | bytes] = deque()

    async def on_frame(self, data: str | bytes) -> None:
        # Parsed and validated on the stream's thread, not on the loop.
        self.frames.append(data)
        self.wake.set()
        await self.backpressure(len(self.frames) >= MAX_PENDING_FRAMES)

    async def finish(self, pump: asyncio.Future[None]) -> None:
        """The client went: what it sent is still written (nobody hears the
        answers), then the pump ends."""
        self.wake.set()
        await pump

    def done(self) -> bool:
        return self.gone and not self.frames

    async def step(self) -> None:
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

    def write(self, queue: Queue, batch: list[str | bytes]) -> list[dict[str, Any]]:
        """The answers to ``batch``'s frames, in order: the valid ones are
        written in one commit (or each on its own, should that fail)."""
        answers: list[dict[str, Any]] = []
        good: list[tuple[int, SendFrame]] = []
        for data in batch:
            try:
                frame = parse_send(data)
            except MQError as exc:
                answers.append(error_frame(exc, frame_id(data)))
                continue
            good.append((len(answers), frame))
            answers.append({})
        try:
            if good:
                self._publish(queue, good, answers)
        finally:
            connection.close()
        return answers

    def _publish(self, queue: Queue, good: list[tuple[int, SendFrame]], answers: list[dict[str, Any]]) -> None:
        batches = [new_messages(frame.messages) for _, frame in good]
        try:
            results = broker.publish(queue, [m for batch in batches for m in batch])
        except MQError as exc:
            if len(good) == 1:
                answers[good[0][0]] = error_frame(exc, good[0][1].id)
            else:
                for one in good:  # so that an error is only its own frame's
                    self._publish(queue, [one], answers)
            return
        at = 0
        for (i, frame), batch in zip(good, batches, strict=True):
            answer: dict[str, Any] = {"type": "sent", "messages": [r.to_dict() for r in results[at : at + len(batch)]]}
            if frame.id is not None:
                answer["id"] = frame.id
            answers[i] = answer
            at += len(batch)
