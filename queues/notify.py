"""Wake long-polling receives when messages become ready.

Waiters are asyncio futures registered per queue id. ``wake()`` may be called
from any thread (the broker runs in worker threads) and resolves them on their
own event loop. Across processes PostgreSQL's LISTEN/NOTIFY carries the wake:
one listening connection per process and event loop, not one per request.

A waiting receive may also offer to take messages: a send in the same
process then leases its new messages to it in the send's own INSERT and
hands them over after the commit (``take``/``hand``; ``broker.publish.Handing``), so
the receive answers without a claim of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .backends import NOTIFY_CHANNEL, dialect
from .speedups import after_response

log = logging.getLogger(__name__)

# Seconds between listener reconnect attempts after PostgreSQL went away.
LISTENER_RETRY_SECONDS = 1.0
# How often a process re-checks the queues its receives wait on, for what no
# wake-up announced (``_watch_forever``).
RECHECK_SECONDS = 1.0

_lock = threading.Lock()
# Per queue, the receives waiting on it, oldest first.
_waiters: dict[int, dict[asyncio.Future[Any], Waiter]] = {}
_listeners: dict[asyncio.AbstractEventLoop, tuple[asyncio.Task[None], dict[str, object]]] = {}
_resolutions: dict[asyncio.AbstractEventLoop, _Resolutions] = {}
# Waiters a loop resolves per turn (``_Resolutions``): fewer answers the
# sends sooner, more answers the woken receives sooner (the trade measured:
# docs/performance.md, "Many waiting consumers").
RESOLVE_PER_TURN = 2


@dataclass(frozen=True)
class Offer:
    """What a waiting receive would lease, were a message ready: a send in
    this process may lease its new messages to it directly (``take``)."""

    max_messages: int
    visibility_timeout: int | None = None
    consumer_id: str | None = None


# Called (on a thread of its own) with the queue id and the deliveries a
# send handed to a receive that had gone away.
Unanswered = Callable[[int, list[Any]], None]


class Waiter:
    """A receive waiting on a queue. ``wait()`` ends with True (woken: look
    again), False (timed out) or a list of deliveries a send handed it."""

    def __init__(
        self,
        future: asyncio.Future[Any],
        offer: Offer | None,
        queue_id: int,
        on_unanswered: Unanswered | None = None,
        interchangeable: bool = False,
    ) -> None:
        self.future = future
        self.offer = offer
        self.queue_id = queue_id
        self.on_unanswered = on_unanswered
        # Whether any ready message of the queue is one this receive may
        # claim (not so on a FIFO queue): then a wake-up may pick it or another.
        self.interchangeable = interchangeable
        # Only while it waits may a send take it; once taken, only that
        # send resolves it (a wake-up or the timeout leave it alone).
        self.armed = False
        self.taken = False
        # In ``wait`` now (not looking at the queue before or between waits).
        self.waiting = False

    async def wait(self, timeout: float) -> bool | list[Any]:
        loop = asyncio.get_running_loop()
        with _lock:
            self.armed = self.offer is not None and not self.future.done()
        # The timeout resolves the same future a wake-up does: the waiting
        # task resumes one loop turn after either (``wait_for`` over a
        # ``shield`` took several, each behind whatever else the loop had
        # queued, such as the sender's response).
        handle = loop.call_later(timeout, _time_out, self)
        self.waiting = True
        try:
            result: bool | list[Any] = await self.future
            return result
        finally:
            self.waiting = False
            handle.cancel()
            with _lock:
                self.armed = False

    def interrupt(self) -> None:
        """On the waiter's own loop: end the wait now with True (look again),
        unless a send took it; that send's hand-off ends it instead."""
        with _lock:
            if not self.taken and not self.future.done():
                self.future.set_result(True)


def _deliver(waiter: Waiter, result: Any) -> None:
    if not waiter.future.done():
        waiter.future.set_result(result)
    elif isinstance(result, list) and result:
        # The receive was cancelled (its client hung up) after a send leased
        # it these: back to ready now, not at their visibility timeout.
        if waiter.on_unanswered is None:
            log.warning("%d messages handed to a receive that went away return at their visibility timeout", len(result))
        else:
            waiter.future.get_loop().run_in_executor(None, waiter.on_unanswered, waiter.queue_id, result)


def _time_out(waiter: Waiter) -> None:
    with _lock:
        if waiter.taken:
            return  # the send that took it resolves it
    _deliver(waiter, False)


def hand(waiter: Waiter, result: list[Any] | bool) -> None:
    """Resolve a waiter from any thread: True (look again), or the
    deliveries a send leased to it after taking it."""
    loop = waiter.future.get_loop()
    if loop.is_closed():
        _release_unanswered(waiter, result)
        return
    with _lock:
        resolutions = _resolutions.get(loop)
        if resolutions is None:
            resolutions = _resolutions[loop] = _Resolutions(loop)
    # In a send served by mq serve's handler: once the sender is answered.
    if not after_response(functools.partial(resolutions.add, waiter, result)):
        resolutions.add(waiter, result)


class _Resolutions:
    """Waiters of one loop to resolve, RESOLVE_PER_TURN a loop turn. A send
    that handed messages to a hundred waiting receives queued their answers
    ahead of its own: resolved all in one turn, each woken receive wrote its
    answer before the send's came out (tens of milliseconds for a send of
    100). A few a turn, they take turns with the rest of the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: deque[tuple[Waiter, Any]] = deque()
        self.scheduled = False

    def add(self, waiter: Waiter, result: Any) -> None:
        """Any thread."""
        with _lock:
            self.pending.append((waiter, result))
            start, self.scheduled = not self.scheduled, True
        if start:
            try:
                self.loop.call_soon_threadsafe(self.run)
            except RuntimeError:  # closed meanwhile
                self.give_up()

    def run(self) -> None:
        for _ in range(RESOLVE_PER_TURN):
            with _lock:
                if not self.pending:
                    self.scheduled = False
                    return
                waiter, result = self.pending.popleft()
            _deliver(waiter, result)
        self.loop.call_soon(self.run)

    def give_up(self) -> None:
        """The loop closed: release what was handed to its receives."""
        with _lock:
            pending, self.pending = list(self.pending), deque()
        for waiter, result in pending:
            _release_unanswered(waiter, result)


def _release_unanswered(waiter: Waiter, result: Any) -> None:
    """A waiter's loop is closed: nobody will answer what a send handed it.
    Release it, on a thread of its own (not the sender's, nor a loop's)."""
    if isinstance(result, list) and result and waiter.on_unanswered is not None:
        threading.Thread(target=waiter.on_unanswered, args=(waiter.queue_id, result), daemon=True).start()


def wake(queues: Mapping[int, int | None] | Iterable[int]) -> None:
    """Wake receives waiting on these queues (any thread), but those a send
    has taken: that send resolves them.

    A queue may map to how many of its messages became ready: as many
    receives are woken, oldest first, so a send of k messages wakes about k
    of a thousand waiting consumers, not all of them (each woken receive
    runs a claim). None, or a plain list of queue ids: every receive. Where
    not every waiting receive may claim any ready message (a FIFO queue's
    groups each belong to one consumer), all are woken too."""
    counts = queues if isinstance(queues, Mapping) else dict.fromkeys(queues)
    if any(n is None for n in counts.values()):
        for hook in _on_change:
            hook()
    woken: list[Waiter] = []
    with _lock:
        for qid, n in counts.items():
            group = _waiters.get(qid)
            if not group:
                continue
            if n is None or not all(w.interchangeable for w in group.values()):
                chosen = [w for w in group.values() if not w.taken]
            else:
                chosen = [w for w in group.values() if not w.taken and not w.future.done()][:n]
            for w in chosen:
                del group[w.future]
            if not group:
                del _waiters[qid]
            woken += chosen
    for w in woken:
        hand(w, True)


# Called when a wake-up names a queue without a count: the queue itself may
# have changed (its settings, a pause, its deletion), here or in another
# process; caches of queues forget it (``broker.queues``).
_on_change: list[Callable[[], None]] = []


def on_change(hook: Callable[[], None]) -> None:
    _on_change.append(hook)


def waiting() -> dict[int, int]:
    """Per queue id, the receives of this process waiting on it now (not
    those looking at it before they wait)."""
    with _lock:
        counts = {qid: sum(w.waiting for w in group.values()) for qid, group in _waiters.items()}
    return {qid: n for qid, n in counts.items() if n}


def parse_payload(payload: str) -> dict[int, int | None]:
    """A NOTIFY's payload, ``"12:5,13"``: queue 12 has 5 messages newly
    ready, queue 13 an unknown number. Raises ValueError."""
    counts: dict[int, int | None] = {}
    for part in filter(None, payload.split(",")):
        qid, _, n = part.partition(":")
        counts[int(qid)] = int(n) if n else None
    return counts


def take(queue_id: int, messages: int) -> list[Waiter]:
    """Waiting receives of this queue (oldest first) with offers covering up
    to ``messages`` ready messages, taken for a send (any thread): the send
    must then ``hand`` each of them its deliveries, or True to look again."""
    taken: list[Waiter] = []
    with _lock:
        for w in _waiters.get(queue_id, {}).values():
            if messages <= 0:
                break
            if w.armed and not w.taken and w.offer is not None and not w.future.done():
                w.taken, w.armed = True, False
                taken.append(w)
                messages -= w.offer.max_messages
    return taken


@contextmanager
def waiter(
    queue_id: int, offer: Offer | None = None, *, on_unanswered: Unanswered | None = None, interchangeable: bool = False
) -> Iterator[Waiter]:
    """Register interest *before* checking the queue, so a message that arrives
    between the empty check and the wait still wakes us (no lost wake-up).
    With an ``offer``, a send in this process may lease messages to it;
    should the receive be gone by the time they are handed over,
    ``on_unanswered`` gives them back."""
    loop = asyncio.get_running_loop()
    _ensure_watch(loop)
    w = Waiter(loop.create_future(), offer, queue_id, on_unanswered, interchangeable)
    with _lock:
        _waiters.setdefault(queue_id, {})[w.future] = w
    try:
        yield w
    finally:
        with _lock:
            group = _waiters.get(queue_id)
            if group is not None:
                group.pop(w.future, None)
                if not group:
                    del _waiters[queue_id]
        if not w.future.done():
            w.future.cancel()


def _ensure_watch(loop: asyncio.AbstractEventLoop) -> None:
    """Start this loop's watch (``_watch_forever``) unless it runs."""
    _forget_closed_loops()
    entry = _listeners.get(loop)
    if entry is None or entry[0].done():
        held: dict[str, object] = {}
        # A context of its own: not the request's that happened to start it.
        _listeners[loop] = (loop.create_task(_watch_forever(held), context=contextvars.Context()), held)


def _forget_closed_loops() -> None:
    """A loop that was closed with its watch pending (a sync caller's
    short-lived loop, under async_to_sync) never ran the watch's cleanup:
    close its connection here, or every such loop would keep one open."""
    with _lock:
        closed = [_resolutions.pop(loop) for loop in [loop for loop in _resolutions if loop.is_closed()]]
    for resolutions in closed:
        resolutions.give_up()
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


async def _watch_forever(held: dict[str, object]) -> None:
    """A process's one watch over the queues its receives wait on.

    On PostgreSQL it LISTENs, and each NOTIFY wakes the receives it names.
    Every RECHECK_SECONDS, and after each (re)connection, it also counts
    what could be claimed on those queues (``recheck``): that wakes them for
    what no NOTIFY announced (delayed messages coming due, a wake-up sent
    while the connection was down) and, on SQLite, for what another process
    sent. One statement a second for the whole process, where each waiting
    receive used to look again on its own: a thousand idle long polls made a
    thousand claims a second, and the sends queued behind them for a
    database connection."""
    if not dialect().postgres:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                await asyncio.get_running_loop().run_in_executor(_recheck_thread, recheck)
            except Exception as exc:
                log.warning("re-checking the waited-on queues failed (%s); retrying", exc)
    import psycopg

    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo(), autocommit=True)
            held["conn"] = conn
            async with conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                while True:
                    await _recheck_on(conn)
                    async for note in conn.notifies(timeout=RECHECK_SECONDS):
                        try:
                            wake(parse_payload(note.payload))
                        except ValueError:
                            log.warning("ignoring malformed notification %r", note.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any connection failure: retry, never die
            log.warning("LISTEN connection lost (%s); retrying", exc)
            await asyncio.sleep(LISTENER_RETRY_SECONDS)


def _recheck_statement() -> tuple[str, list[Any]] | None:
    counts = waiting()
    if not counts:
        return None
    return dialect().claimable(sorted(counts), time.time(), max(counts.values()))


async def _recheck_on(conn: Any) -> None:
    statement = _recheck_statement()
    if statement is not None:
        cur = await conn.execute(*statement)
        wake({qid: n for qid, n in await cur.fetchall() if n})


def recheck() -> None:
    """``_watch_forever``'s count of what could be claimed, through Django's
    connection on this thread, closed after (SQLite)."""
    from django.db import connection

    statement = _recheck_statement()
    if statement is None:
        return
    try:
        with connection.cursor() as cur:
            cur.execute(*statement)
            rows = cur.fetchall()
    finally:
        connection.close()
    wake({qid: n for qid, n in rows if n})


# Rechecks on SQLite run here, on a thread of their own with a connection of
# their own: not on a thread whose connection a request or a test holds.
_recheck_thread = ThreadPoolExecutor(1, thread_name_prefix="mq-recheck")


def listener_running() -> bool:
    return any(not task.done() for task, _ in _listeners.values())
