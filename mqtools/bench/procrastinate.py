"""The Procrastinate peer: its jobs on the same PostgreSQL, in a schema of
its own, deferred by its app and run by its worker.

Reported as skipped, with the reason, where procrastinate is missing or its
schema cannot be set up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from .measure import BODY, conninfo, vacuum_between_rounds

PROCRASTINATE_SCHEMA = "procrastinate_bench"

_procrastinate_done: list[float] = []
_procrastinate_event: asyncio.Event | None = None


def _procrastinate_app() -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=conninfo(options=f"-c search_path={PROCRASTINATE_SCHEMA}"), min_size=1, max_size=8
        )
    )

    @app.task(name="bench_noop", queue="bench")
    async def bench_noop(**kwargs: Any) -> None:
        _procrastinate_done.append(time.perf_counter())
        if "i" in kwargs:
            _procrastinate_got[kwargs["i"]] = time.perf_counter()
            if _procrastinate_event is not None:
                _procrastinate_event.set()

    return app, bench_noop


_procrastinate_got: dict[int, float] = {}


def procrastinate_available() -> str | None:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return "procrastinate not installed"
    try:
        with psycopg.connect(conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PROCRASTINATE_SCHEMA}")
            exists = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'procrastinate_jobs'",
                [PROCRASTINATE_SCHEMA],
            ).fetchone()
        if not exists:
            app, _ = _procrastinate_app()

            async def apply() -> None:
                async with app.open_async():
                    await app.schema_manager.apply_schema_async()

            asyncio.run(apply())
        _procrastinate_clear()
    except Exception as exc:
        return f"could not set up its schema: {type(exc).__name__}: {str(exc)[:100]}"
    return None


def procrastinate_defer(calls: int, per: int) -> float:
    app, task = _procrastinate_app()

    async def main() -> float:
        async with app.open_async():
            t = time.perf_counter()
            for _ in range(calls):
                if per == 1:
                    await task.defer_async(body=BODY)
                else:
                    await task.batch_defer_async(*[{"body": BODY}] * per)
            return calls * per / (time.perf_counter() - t)

    try:
        return asyncio.run(main())
    finally:
        _procrastinate_clear()


def _procrastinate_clear() -> None:
    # Its triggers name its tables unqualified: run with its search_path.
    with psycopg.connect(conninfo(options=f"-c search_path={PROCRASTINATE_SCHEMA}"), autocommit=True) as conn:
        conn.execute(f"DELETE FROM {PROCRASTINATE_SCHEMA}.procrastinate_jobs")
    vacuum_between_rounds([f"{PROCRASTINATE_SCHEMA}.{t}" for t in ("procrastinate_jobs", "procrastinate_events", "procrastinate_workers")])


def procrastinate_worker(total: int, concurrency: int) -> float:
    """Jobs per second of a worker draining ``total`` waiting no-op jobs."""
    app, task = _procrastinate_app()

    async def main() -> float:
        async with app.open_async():
            for start in range(0, total, 500):
                await task.batch_defer_async(*[{"body": BODY}] * min(500, total - start))
            _procrastinate_done.clear()
            t = time.perf_counter()
            await asyncio.wait_for(
                app.run_worker_async(
                    queues=["bench"], wait=False, concurrency=concurrency, delete_jobs="successful", install_signal_handlers=False
                ),
                timeout=600,
            )
            if len(_procrastinate_done) < total:
                raise RuntimeError(f"worker ran {len(_procrastinate_done)} of {total} jobs")
            return total / (_procrastinate_done[-1] - t)

    try:
        return asyncio.run(main())
    finally:
        _procrastinate_clear()


def procrastinate_latency(n: int) -> list[float]:
    app, task = _procrastinate_app()

    async def main() -> list[float]:
        global _procrastinate_event
        _procrastinate_event = asyncio.Event()
        samples = []
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(queues=["bench"], wait=True, concurrency=1, delete_jobs="successful", install_signal_handlers=False)
            )
            try:
                await asyncio.sleep(0.5)
                for i in range(n):
                    _procrastinate_event.clear()
                    t = time.perf_counter()
                    await task.defer_async(i=i)
                    await asyncio.wait_for(_procrastinate_event.wait(), 10)
                    samples.append((_procrastinate_got[i] - t) * 1000)
                    await asyncio.sleep(0.02)
            finally:
                worker.cancel()
                try:
                    await asyncio.wait_for(worker, 10)
                except (asyncio.CancelledError, TimeoutError):
                    pass
        return samples

    try:
        return asyncio.run(main())
    finally:
        _procrastinate_event = None
        _procrastinate_clear()
