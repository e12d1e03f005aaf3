"""The background loop: returns expired leases, brings delayed messages due,
folds counters, forgets old dedup ids, applies retention.

Any number of monitors may run (one per node); exactly one acts at a time.
On PostgreSQL the leader holds a session advisory lock on a connection of its
own: if that connection dies the lock is released by the server and another
monitor takes over on its next attempt. On SQLite (one machine) an exclusive
file lock beside the database does the same.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from . import broker
from .backends import dialect

log = logging.getLogger(__name__)

LEASE_SWEEP_SECONDS = 0.25  # how late a lease may be returned after it expires
STATS_FOLD_SECONDS = 1.0
DEDUP_PRUNE_SECONDS = 30.0
RETENTION_SECONDS = 10.0
VACUUM_CHECK_SECONDS = 5.0  # PostgreSQL without autovacuum: see broker.vacuum_unvacuumed
LEADER_RETRY_SECONDS = 1.0  # a follower tries to take the lead this often
ERROR_BACKOFF_SECONDS = 1.0
LEADER_LOCK_KEY = 0x6D71_6D6F  # "mqmo": the advisory lock every monitor competes for

#: Extra work for each tick, in order (consumer health, dashboard snapshots…).
#: Each is called as hook(now) while this process leads.
TICK_HOOKS: list[Callable[[float], Any]] = []


class Leadership:
    """Who acts. ``acquire()`` is cheap to call every tick."""

    def __init__(self) -> None:
        self._pg: Any = None
        self._file: Any = None

    @property
    def held(self) -> bool:
        return self._pg is not None or self._file is not None

    def acquire(self) -> bool:
        if dialect().postgres:
            return self._acquire_pg()
        return self._acquire_file()

    def _acquire_pg(self) -> bool:
        import psycopg

        from .notify import conninfo

        if self._pg is not None:
            try:
                # The lock lives as long as this session: prove it still does.
                self._pg.execute("SELECT 1")
                return True
            except psycopg.Error:
                log.warning("monitor lost its database session; giving up the lead")
                self.release()
        try:
            conn = psycopg.connect(conninfo(), autocommit=True, connect_timeout=3)
        except psycopg.Error:
            return False
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK_KEY]).fetchone()
        if got and got[0]:
            self._pg = conn
            log.info("monitor is now the leader")
            return True
        conn.close()
        return False

    def _acquire_file(self) -> bool:
        if self._file is not None:
            return True
        name = Path(str(settings.DATABASES["default"]["NAME"]))
        lock_path = name.with_name(name.name + ".monitor.lock")
        handle = open(lock_path, "a")  # noqa: SIM115 - held open as the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            except Exception:  # closing a dead connection may fail; it is gone either way
                pass
            self._pg = None
        if self._file is not None:
            self._file.close()
            self._file = None


def tick(now: float | None = None) -> dict[str, int]:
    """One pass of the lease and delay sweeps and the counter fold (the
    leader's work; tests call it directly)."""
    now = time.time() if now is None else now
    done = {"promoted": broker.promote_due(now=now), "expired": 0}
    while True:
        n = broker.expire_leases(now=now)
        done["expired"] += n
        if n < broker.SWEEP_BATCH:
            break
    for hook in TICK_HOOKS:
        hook(now)
    return done


class Background:
    """Runs ``job`` on a thread of its own when poked, one run at a time (a
    poke while it runs is dropped), so a long job (a VACUUM of a big table)
    never holds up the lease sweeps."""

    def __init__(self, name: str, job: Callable[[], Any]) -> None:
        self.name = name
        self.job = job
        self._running = threading.Lock()

    def poke(self) -> None:
        if self._running.acquire(blocking=False):
            threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def _run(self) -> None:
        try:
            self.job()
        except Exception:
            log.exception("%s failed; it runs again at its next turn", self.name)
        finally:
            connection.close()
            self._running.release()


class Monitor:
    def __init__(self) -> None:
        self.leadership = Leadership()
        self.vacuum = Background("mq-vacuum", broker.vacuum_unvacuumed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_tick: float | None = None
        self._next: dict[str, float] = {}

    def _due(self, job: str, every: float, now: float) -> bool:
        if self._next.get(job, 0.0) <= now:
            self._next[job] = now + every
            return True
        return False

    def run(self) -> None:
        log.info("monitor started")
        while not self._stop.is_set():
            wait = LEASE_SWEEP_SECONDS
            try:
                if self.leadership.acquire():
                    now = time.time()
                    tick(now)
                    if self._due("fold", STATS_FOLD_SECONDS, now):
                        broker.fold_stats()
                    if self._due("dedup", DEDUP_PRUNE_SECONDS, now):
                        broker.prune_dedup(now=now)
                    if self._due("retention", RETENTION_SECONDS, now):
                        broker.enforce_retention(now=now)
                    if self._due("vacuum", VACUUM_CHECK_SECONDS, now):
                        self.vacuum.poke()
                    self.last_tick = time.time()
                else:
                    wait = LEADER_RETRY_SECONDS
            except Exception:  # the loop must outlive any one failure
                log.exception("monitor tick failed; retrying")
                self.leadership.release()
                wait = ERROR_BACKOFF_SECONDS
                try:
                    connection.close()
                except Exception:
                    pass
            finally:
                close_old_connections()
            self._stop.wait(wait)
        self.leadership.release()
        connection.close()
        log.info("monitor stopped")

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="mq-monitor", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


_current: Monitor | None = None


def start_in_background() -> Monitor:
    global _current
    if _current is None:
        _current = Monitor()
        _current.start()
    return _current


def status() -> dict[str, Any]:
    if _current is None:
        return {"running": False}
    age = None if _current.last_tick is None else round(time.time() - _current.last_tick, 2)
    return {"running": True, "leader": _current.leadership.held, "last_tick_age": age}
