"""Django's ASGI handler, with the request threads kept.

Django runs each request's sync code (middleware, views, the ORM) on a
thread of its own: it enters ``ThreadSensitiveContext()``, and asgiref makes
a one-thread executor for that context and shuts it down when the request
ends. That is a new OS thread started and joined for every request, a
noticeable share of a small request's cost. Here each request borrows a
one-thread executor from a free list and gives it back, so the threads (and
the database connection each one holds) are reused. Sync code still runs on
one thread per request, as Django expects.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

# Idle executors kept for reuse; a burst above this starts extra threads that
# are shut down when their request ends.
KEEP_IDLE = 64


class ReusedThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < KEEP_IDLE:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

