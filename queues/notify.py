"""Wake long-polling receives when messages become ready.

Waiters are asyncio futures registered per queue id. ``wake()`` may be called
from any thread (the broker runs in worker threads) and resolves them on their
own event loop. Across processes PostgreSQL's LISTEN/NOTIFY carries the wake:
one listening connection per process and event loop, not one per request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.conf import settings

from .backends import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

# Seconds between listener reconnect attempts after PostgreSQL went away.
LISTENER_RETRY_SECONDS = 1.0

_lock = threading.Lock()
_waiters: dict[int, set[asyncio.Future[None]]] = {}
_listeners: dict[asyncio.AbstractEventLoop, tuple[asyncio.Task[None], dict[str, object]]] = {}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def wake(queue_ids: Iterable[int]) -> None:
    """Wake every receive waiting on these queues (any thread)."""
    with _lock:
        futures = [f for qid in queue_ids for f in _waiters.pop(qid, ())]
    for future in futures:
        loop = future.get_loop()
        if loop.is_closed():
            continue
        loop.call_soon_threadsafe(_resolve, future)


class Waiter:
    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future

    async def wait(self, timeout: float) -> bool:
        """True when woken, False on timeout."""
        try:
            await asyncio.wait_for(asyncio.shield(self.future), timeout)
            return True
        except TimeoutError:
            return False


@contextmanager
def waiter(queue_id: int) -> Iterator[Waiter]:
    """Register interest *before* checking the queue, so a message that arrives
    between the empty check and the wait still wakes us (no lost wake-up)."""
    loop = asyncio.get_running_loop()
    _ensure_listener(loop)
    future: asyncio.Future[None] = loop.create_future()
    with _lock:
        _waiters.setdefault(queue_id, set()).add(future)
    try:
        yield Waiter(future)
    finally:
        with _lock:
            group = _waiters.get(queue_id)
            if group is not None:
                group.discard(future)
                if not group:
                    del _waiters[queue_id]
        if not future.done():
            future.cancel()


def _ensure_listener(loop: asyncio.AbstractEventLoop) -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        return
    _forget_closed_loops()
    entry = _listeners.get(loop)
    if entry is None or entry[0].done():
        held: dict[str, object] = {}
        # A context of its own: not the request's that happened to start it.
        _listeners[loop] = (loop.create_task(_listen_forever(held), context=contextvars.Context()), held)


def _forget_closed_loops() -> None:
    """A loop that was closed with its listener pending (a sync caller's
    short-lived loop, under async_to_sync) never ran the listener's cleanup:
    close its connection here, or every such loop would keep one open."""
    for loop in [loop for loop in _listeners if loop.is_closed()]:
        _task, held = _listeners.pop(loop)
        conn = held.get("conn")
        if conn is not None:
            conn.pgconn.finish()  # type: ignore[attr-defined]


def conninfo() -> str:
    from psycopg.conninfo import make_conninfo

    db = settings.DATABASES["default"]
    params = {
        "dbname": db.get("NAME") or "postgres",
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": str(db["PORT"]) if db.get("PORT") else None,
    }
    return make_conninfo(**{k: v for k, v in params.items() if v})


async def _listen_forever(held: dict[str, object]) -> None:
    import psycopg

    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo(), autocommit=True)
            held["conn"] = conn
            async with conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                # Whatever was sent while we were not listening is not lost:
                # waiters re-check the queue on their own every second.
                async for note in conn.notifies():
                    try:
                        wake([int(x) for x in note.payload.split(",") if x])
                    except ValueError:
                        log.warning("ignoring malformed notification %r", note.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any connection failure: retry, never die
            log.warning("LISTEN connection lost (%s); retrying", exc)
            await asyncio.sleep(LISTENER_RETRY_SECONDS)


def listener_running() -> bool:
    return any(not task.done() for task, _ in _listeners.values())
