"""What the broker announces: redeliveries, dead-letterings, purges, redrives,
requeues, consumer deaths.

Events are recorded only after the transaction that caused them commits (a
rolled-back purge announces nothing) and land in a bounded in-process buffer.
The dashboard publisher drains it, coalesces bursts and sends them to the
channel layer, so a transaction never waits on the channel layer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from django.db import transaction

# Events kept while nobody drains them; the oldest are dropped first (they are
# notifications, the messages themselves are in the database).
BUFFER_LIMIT = 10_000

EVENT_KINDS = (
    "redelivery",
    "dead_letter",
    "consumer_dead",
    "purge",
    "redrive",
    "requeue",
    "queue_deleted",
    "retention",
    "pause",
    "resume",
)

_lock = threading.Lock()
_buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER_LIMIT)
_listeners: list[Any] = []


def emit(kind: str, queue: str | None, **data: Any) -> None:
    """Announce an event once the current transaction commits."""
    event = {"kind": kind, "queue": queue, "at": time.time(), **data}
    transaction.on_commit(lambda: _record(event))


def _record(event: dict[str, Any]) -> None:
    with _lock:
        _buffer.append(event)
    for listener in list(_listeners):
        listener()


def drain() -> list[dict[str, Any]]:
    """Take every buffered event, oldest first."""
    with _lock:
        events = list(_buffer)
        _buffer.clear()
    return events


def subscribe(callback: Any) -> None:
    """Call ``callback()`` (from any thread) whenever an event is recorded."""
    _listeners.append(callback)
