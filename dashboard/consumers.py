"""The dashboard websocket: pushes, never writes.

On connect a staff socket gets a ``snapshot`` read fresh from the database,
then relays what the aggregator and the event flushers publish to the group.
It computes nothing per tick: a thousand open dashboards cost the broker the
same as one.

Server -> browser frames (JSON objects with a ``type``):

``snapshot``  on connect: ``queues`` (counts, rates, paused), ``consumers``,
              recent ``events`` and the broker-total chart ``history``.
``queue``     one queue's counts, sent when they change: ready, delayed,
              in_flight, dead, oldest_ready_age / oldest_ready_at, in_rate,
              out_rate (messages/s over ~5 s), paused.
``consumer``  one consumer's health, sent when it changes: status
              (alive/suspect/dead), last_heartbeat, in_flight.
``event``     kind (redelivery, dead_letter, consumer_dead, purge, redrive,
              requeue, pause, resume, retention, queue_deleted), queue, at,
              the event's own fields; a burst is one frame with
              ``coalesced: true``, ``events: N`` and a few ``examples``.
``tick``      about once a second: ``at`` and broker ``totals``.
``queue_removed`` / ``consumer_removed``, and ``history`` (the answer to a
page's ``{"type": "history", "queue": name-or-null}``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import publisher

GROUP = publisher.GROUP
# Close codes in the private range: the page stops reconnecting on these.
CLOSE_FORBIDDEN = 4403


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_staff:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        publisher.register_loop(asyncio.get_running_loop())
        publisher.flusher.notify()  # events kept while no dashboard was open
        # Join first, then read: an update published in between is relayed
        # after the snapshot and only repeats what the snapshot showed.
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send_json(await database_sync_to_async(publisher.snapshot)())

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return json.loads(text_data)
        except ValueError:
            return None  # a garbled request is ignored, the socket stays up

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The only request a page makes: chart history this process kept.
        if isinstance(content, dict) and content.get("type") == "history":
            queue = content.get("queue")
            if queue is not None and not isinstance(queue, str):
                return
            await self.send_json({"type": "history", **publisher.history.series(queue)})

    async def dashboard_frames(self, message: dict[str, Any]) -> None:
        publisher.history.observe(message["frames"], message["batch"])
        for frame in message["frames"]:
            await self.send_json(frame)
