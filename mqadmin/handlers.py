"""Django's ASGI handler, with the request threads kept and one thread
hand-off per request to a sync view.

Django runs each request's sync code (middleware, views, the ORM) on a
thread of its own: it enters ``ThreadSensitiveContext()``, and asgiref makes
a one-thread executor for that context and shuts it down when the request
ends. That is a new OS thread started and joined for every request, a
noticeable share of a small request's cost. Here each request borrows a
one-thread executor from a free list and gives it back, so the threads (and
the database connection each one holds) are reused.

A request whose view is sync (every API call but the long-polling receive,
the admin, the pages) is then served the way a WSGI server serves it: the
body is read on the event loop, and the ``request_started`` signal, the sync
middleware chain, the view and ``request_finished`` run in one call on the
request's thread. Django's async path would hand off to that thread three
times (the two signals' sync receivers and the view), each hand-off a
future, a wake-up of the loop and a context copy: measured on the 2-core
machine, a third of a small API call's CPU.

A receive that does not wait (no ``wait``, or 0: what a busy consumer sends)
has nothing to do on the loop: it is served the same way, by the API's sync
twin of the receive view (``receive_now``), while the loop watches the
client; should it hang up, what the claim leased is released at once. On the
2-core VM an empty receive went from 2.8-3.1 to 2.1-2.2 ms of server CPU.

An async view (a receive that may wait on the loop for a wake-up) runs on
the loop as Django runs it, but ``request_started``'s receivers run on the
request's thread just before the view's first job there, in the same
hand-off, instead of in one of their own; ``request_finished`` runs on that
thread after the response has gone out, as in Django.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import lru_cache, partial
from typing import IO, Any

import orjson
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpResponseBase
from django.urls import Resolver404, get_resolver, set_script_prefix

# Idle executors kept for reuse; a burst above this starts extra threads that
# are shut down when their request ends.
KEEP_IDLE = 64


@lru_cache(maxsize=4096)
def view_is_sync(path_info: str) -> bool:
    """Whether the view at this path is a plain function (not a coroutine).
    Unknown paths are answered (404) on the sync path too."""
    try:
        match = get_resolver().resolve(path_info)
    except Resolver404:
        return True
    return not iscoroutinefunction(match.func)


class RequestThread(ThreadPoolExecutor):
    """A request's thread. ``first`` runs just before the next job handed to
    it, in that job's hand-off; ``used`` tells whether any job was."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="request")
        self.first: Callable[[], Any] | None = None
        self.used = False

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.used = True
        first, self.first = self.first, None
        if first is None:
            return super().submit(fn, *args, **kwargs)
        return super().submit(_after, first, fn, *args, **kwargs)


def _after(first: Callable[[], Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    first()
    return fn(*args, **kwargs)


class RequestProcessed(Exception):
    pass


class ReusedThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[RequestThread] = []
        # The same middleware, loaded as a WSGI handler loads it.
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._idle.pop() if self._idle else RequestThread()
        try:
            path = path_info(scope)
            if view_is_sync(path):
                await self.handle_in_thread(executor, scope, receive, send)
            elif scope["method"] == "POST" and path.startswith(API_PREFIX) and path.endswith(RECEIVE):
                await self.handle_receive(executor, scope, receive, send)
            else:
                async with ThreadSensitiveContext(executor=executor):
                    await self.handle_async(executor, scope, receive, send)
        finally:
            if len(self._idle) < KEEP_IDLE:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def handle_receive(self, executor: RequestThread, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A receive: one that does not wait is served as a sync view (the
        API's ``receive_now``), one that may wait by the async ``receive``."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        if may_wait(body_file):
            async with ThreadSensitiveContext(executor=executor):
                await self.handle_async(executor, scope, receive, send, body_file)
            return
        now = dict(scope, path=scope["path"] + NOW_SUFFIX)
        now[SERVED_NOW] = True
        await self.handle_in_thread(executor, now, receive, send, body_file, leases=True)

    async def handle_in_thread(
        self,
        executor: ThreadPoolExecutor,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        body_file: IO[bytes] | None = None,
        *,
        leases: bool = False,
    ) -> None:
        """``leases``: the view may lease messages (``response.leased``); the
        client is watched meanwhile, and should it hang up, they are
        released instead of waiting out their visibility timeout."""
        if body_file is None:
            try:
                body_file = await self.read_body(receive)
            except RequestAborted:
                return
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        answer = loop.run_in_executor(executor, context.run, self.respond, scope, body_file)
        if leases:
            # Ends (RequestAborted) when the client hangs up.
            hang_up = asyncio.ensure_future(self.listen_for_disconnect(receive))
            await asyncio.wait((answer, hang_up), return_when=asyncio.FIRST_COMPLETED)
            if not hang_up.done():
                hang_up.cancel()
            else:
                hang_up.exception()  # retrieved: the client is gone
                # Let the view finish; answer nobody.
                response = await answer
                leased: tuple[int, list[Any]] | None = getattr(response, "leased", None)
                if leased and leased[1]:
                    from queues.broker import release_unanswered_now

                    await loop.run_in_executor(executor, context.run, release_unanswered_now, *leased)
                return
        response = await answer
        try:
            await self.send_response(response, send)
        finally:
            if response.streaming:
                await loop.run_in_executor(executor, context.run, response.close)

    async def handle_async(
        self, executor: RequestThread, scope: dict[str, Any], receive: Any, send: Any, body_file: IO[bytes] | None = None
    ) -> None:
        """Django's ``ASGIHandler.handle``, with ``request_started`` deferred
        to the request thread's first job."""
        if body_file is None:
            try:
                body_file = await self.read_body(receive)
            except RequestAborted:
                return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            executor.used = False
            executor.first = partial(signals.request_started.send, sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is None:
                assert response is not None  # create_request returns one or the other
                await self.send_response(response, send)
            else:
                response = None
                try:
                    try:
                        # A client that hangs up cancels the view (a waiting receive stops).
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self.listen_for_disconnect(receive))
                            response = await self.run_get_response(request)
                            await self.send_response(response, send)
                            raise RequestProcessed
                    except* (RequestProcessed, RequestAborted):
                        pass
                except BaseExceptionGroup as group:
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
            finish = response.close if response is not None else partial(signals.request_finished.send, sender=self.__class__)
            if executor.used:
                # On the thread whose database connection it gives back.
                await sync_to_async(finish)()
            else:
                # Nothing ran on the request's thread: it holds nothing to release.
                first, executor.first = executor.first, None
                if first is not None:
                    first()
                finish()

    def respond(self, scope: dict[str, Any], body_file: IO[bytes]) -> HttpResponseBase:
        """The whole request on its thread, as Django's WSGIHandler runs it.
        A response that is not streamed is closed here (``request_finished``:
        the database connection goes back to the pool) before it is sent."""
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                if scope.get(SERVED_NOW):
                    # Routed by its path_info; logged and shown by the path the client asked for.
                    request.path = request.path.removesuffix(NOW_SUFFIX)
                response = self._sync.get_response(request)
                response._handler_class = self.__class__  # type: ignore[attr-defined]
            assert response is not None
            if not response.streaming:
                response.close()
            return response


API_PREFIX = "/api/v1/"
RECEIVE = "/receive"
# A receive that does not wait is served at its path plus NOW_SUFFIX (the
# API's sync ``receive_now``), with SERVED_NOW set in its scope.
NOW_SUFFIX = "-now"
SERVED_NOW = "mqadmin.receive_now"


def may_wait(body_file: IO[bytes]) -> bool:
    """Whether a receive's body may ask it to wait: anything but a JSON
    object whose ``wait`` is absent or zero. A body the API would refuse
    goes the async view's way too, which answers it as it always did."""
    data = body_file.read()
    body_file.seek(0)
    try:
        body = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return True
    if not isinstance(body, dict):
        return True
    wait = body.get("wait", 0)
    return type(wait) not in (int, float) or wait != 0


def path_info(scope: dict[str, Any]) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path
