"""Server speed-ups that `mq serve` applies (``apply()``), and only it.

Each patches a pinned dependency and is applied only while that
dependency's version is the one it was written for; otherwise it is
skipped, with a warning, and the server runs as the library ships it.
``MQ_SPEEDUPS=off`` skips them all. What each gains, measured with and
without it, is in docs/performance.md.

1. Django's ASGI handler, with the request threads kept and one thread
   hand-off per request to a sync view. Django runs each request's sync code
   (middleware, views, the ORM) on a thread of its own: it enters
   ``ThreadSensitiveContext()``, and asgiref makes a one-thread executor for
   that context and shuts it down when the request ends, a new OS thread
   started and joined for every request. Here each request borrows a
   one-thread executor from a free list and gives it back, so the threads
   (and the database connection each one holds) are reused. A request whose
   view is sync is then served the way a WSGI server serves it: the body is
   read on the event loop, and ``request_started``, the sync middleware
   chain, the view and ``request_finished`` run in one call on the
   request's thread, where Django's async path hands off three times.
   An async view runs on the loop as Django runs it, but ``request_started``
   runs on the request's thread just before the view's first job there.

   A view may name a *sync twin* (``SyncTwin``, set as the ``sync_twin``
   attribute of its URL pattern's view): a sync view that the handler runs
   instead, on the request's thread, when the twin's ``when`` accepts the
   request body (a long-poll receive that does not wait has nothing to do
   on the loop). The loop watches the client meanwhile; should it hang up,
   the twin's ``on_hang_up`` gets the response that nobody will read.
   The twin's URL answers only requests the handler routed to it
   (``TWIN_SCOPE_KEY`` in the scope): ``is_twin_request``.

2. Twisted (under daphne) parses the Content-Type of every POST through the
   email package to decide whether to decode a form body that daphne never
   reads: the answer depends only on the header's bytes, and clients send
   the same few, so it is cached.

3. daphne's access log only: Twisted's factory formatted a second line per
   request into its legacy log, which nobody reads.

4. daphne keeps every request in ``Server.connections`` until its
   once-a-second checker reaps it, and its timeout checker visits them all:
   on a busy server that pass held the event loop for milliseconds each
   second. A request whose response went out and whose application finished
   cleanly is forgotten at once; one that raised is left to the checker,
   which logs it as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import IO, Any

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver, reverse, set_script_prefix

log = logging.getLogger("queues.speedups")

# The versions each patch was written for.
DJANGO_VERSION = (6, 1)
TWISTED_VERSION = "26.10.0"
DAPHNE_VERSION = "4.2.3"
# Set in the scope of a request the handler routed to a view's sync twin.
TWIN_SCOPE_KEY = "mq.sync_twin"

# Idle executors (request threads) kept for reuse: KEEP_IDLE always, and as
# many as were busy at once for IDLE_LINGER_SECONDS after requests last had
# to start new ones. A fleet of long polls holds one each while it waits and
# polls again all at once: with a fixed 64 kept, each poll of a fleet of
# 2,000 started and stopped a thread (and made a database wrapper for it), a
# quarter of the server's time. An idle one holds a thread's stack, and no
# database connection once its request has ended (the pool has it back).
KEEP_IDLE = 64
IDLE_LINGER_SECONDS = 120.0
# Surplus idle executors shut down per request once demand has fallen.
TRIM_PER_REQUEST = 4


@dataclass(frozen=True)
class SyncTwin:
    """A sync view that serves a request in its async view's place when
    ``when(body)`` says so; ``url_name`` names its URL pattern (in the
    async view's namespace, with the same arguments)."""

    url_name: str
    when: Callable[[bytes], bool]
    on_hang_up: Callable[[HttpResponseBase], None] | None = None


def is_twin_request(request: HttpRequest) -> bool:
    """Whether the handler routed this request to a sync twin (a twin's URL
    answers nothing else)."""
    return bool(getattr(request, "scope", {}).get(TWIN_SCOPE_KEY))


@dataclass(frozen=True)
class Route:
    sync: bool
    twin: SyncTwin | None = None
    twin_path: str = ""


@lru_cache(maxsize=4096)
def route(path_info: str) -> Route:
    """Whether the view at this path is a plain function (not a coroutine),
    and its sync twin if it has one. Unknown paths are answered (404) on the
    sync path too."""
    try:
        match = get_resolver().resolve(path_info)
    except Resolver404:
        return Route(sync=True)
    twin: SyncTwin | None = getattr(match.func, "sync_twin", None)
    if twin is None:
        return Route(sync=not iscoroutinefunction(match.func))
    name = f"{match.namespace}:{twin.url_name}" if match.namespace else twin.url_name
    return Route(sync=False, twin=twin, twin_path=reverse(name, args=match.args, kwargs=match.kwargs))


class RequestThread(ThreadPoolExecutor):
    """A request's thread. ``first`` runs just before the next job handed to
    it, in that job's hand-off; ``used`` tells whether any job was."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="request", initializer=_bind, initargs=(self,))
        self.first: Callable[[], Any] | None = None
        self.used = False

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.used = True
        first, self.first = self.first, None
        if first is None:
            return super().submit(fn, *args, **kwargs)
        return super().submit(_after, first, fn, *args, **kwargs)


_request_thread = threading.local()


def _bind(executor: RequestThread) -> None:
    _request_thread.executor = executor


def holds_nothing() -> None:
    """Called on a request's thread once it holds nothing the request's end
    must release there (a waiting receive gave its database connection
    back): the end then runs on the loop, a thread hand-off less for each
    answered long poll. Elsewhere, nothing happens."""
    executor = getattr(_request_thread, "executor", None)
    if executor is not None:
        executor.used = False


def _after(first: Callable[[], Any], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    first()
    return fn(*args, **kwargs)


class AfterResponse:
    """Callbacks a request's view asked to run once its response is sent
    (``after_response``). Once run, a late one (from a view still running
    after its request was given up) runs at once, on its caller's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.callbacks: list[Callable[[], Any]] | None = []

    def add(self, fn: Callable[[], Any]) -> bool:
        with self.lock:
            if self.callbacks is None:
                return False
            self.callbacks.append(fn)
            return True

    def run(self) -> None:
        with self.lock:
            callbacks, self.callbacks = self.callbacks or [], None
        for fn in callbacks:
            fn()


_after_response: contextvars.ContextVar[AfterResponse | None] = contextvars.ContextVar("mq_after_response", default=None)


def after_response(fn: Callable[[], Any]) -> bool:
    """Run ``fn`` once this request's response has been sent (a send's
    hand-offs to waiting receives: the sender is answered first, they
    after). False when not in a request that can do so: the caller runs
    ``fn`` itself, now."""
    pending = _after_response.get()
    return pending is not None and pending.add(fn)


class RequestProcessed(Exception):
    pass


class ReusedThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[RequestThread] = []
        # When a request last found no idle thread.
        self._short_at = -IDLE_LINGER_SECONDS
        # The same middleware, loaded as a WSGI handler loads it.
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.borrow()
        try:
            found = route(path_info(scope))
            if found.sync:
                await self.handle_in_thread(executor, scope, receive, send)
            elif found.twin is not None:
                await self.handle_twin(executor, found, scope, receive, send)
            else:
                async with ThreadSensitiveContext(executor=executor):
                    await self.handle_async(executor, scope, receive, send)
        finally:
            self.give_back(executor)

    def borrow(self) -> RequestThread:
        """An idle request thread, or a new one (demand is high: keep what
        we have a while longer); trims the surplus once demand has fallen."""
        now = time.monotonic()
        if not self._idle:
            self._short_at = now
            return RequestThread()
        if len(self._idle) > KEEP_IDLE and now - self._short_at > IDLE_LINGER_SECONDS:
            for _ in range(min(TRIM_PER_REQUEST, len(self._idle) - KEEP_IDLE)):
                self._idle.pop(0).shutdown(wait=False)
        return self._idle.pop()

    def give_back(self, executor: RequestThread) -> None:
        if len(self._idle) < KEEP_IDLE or time.monotonic() - self._short_at <= IDLE_LINGER_SECONDS:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)

    async def handle_twin(self, executor: RequestThread, found: Route, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A view with a sync twin: the twin serves the request when its
        ``when`` accepts the body, the async view otherwise."""
        assert found.twin is not None
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        body = body_file.read()
        body_file.seek(0)
        if not found.twin.when(body):
            async with ThreadSensitiveContext(executor=executor):
                await self.handle_async(executor, scope, receive, send, body_file)
            return
        root = scope.get("root_path", "")
        twin_scope = dict(scope, path=root + found.twin_path)
        twin_scope[TWIN_SCOPE_KEY] = scope["path"]
        await self.handle_in_thread(executor, twin_scope, receive, send, body_file, on_hang_up=found.twin.on_hang_up)

    async def handle_in_thread(
        self,
        executor: ThreadPoolExecutor,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        body_file: IO[bytes] | None = None,
        *,
        on_hang_up: Callable[[HttpResponseBase], None] | None = None,
    ) -> None:
        """With ``on_hang_up``, the client is watched meanwhile, and should it
        hang up, the response nobody will read goes to ``on_hang_up`` (on
        the request's thread)."""
        if body_file is None:
            try:
                body_file = await self.read_body(receive)
            except RequestAborted:
                return
        loop = asyncio.get_running_loop()
        pending = AfterResponse()
        context = contextvars.copy_context()
        context.run(_after_response.set, pending)
        answer = loop.run_in_executor(executor, context.run, self.respond, scope, body_file)
        try:
            await self.answer(answer, executor, context, send, receive, on_hang_up)
        finally:
            pending.run()

    async def answer(
        self,
        answer: asyncio.Future[HttpResponseBase],
        executor: ThreadPoolExecutor,
        context: contextvars.Context,
        send: Any,
        receive: Any,
        on_hang_up: Callable[[HttpResponseBase], None] | None,
    ) -> None:
        """Send the response the request's thread makes (``answer``)."""
        loop = asyncio.get_running_loop()
        if on_hang_up is not None:
            # Ends (RequestAborted) when the client hangs up.
            hang_up = asyncio.ensure_future(self.listen_for_disconnect(receive))
            await asyncio.wait((answer, hang_up), return_when=asyncio.FIRST_COMPLETED)
            if not hang_up.done():
                hang_up.cancel()
            else:
                hang_up.exception()  # retrieved: the client is gone
                # Let the view finish; answer nobody.
                response = await answer
                await loop.run_in_executor(executor, context.run, on_hang_up, response)
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
                if scope.get(TWIN_SCOPE_KEY):
                    # Routed to the twin; logged and shown by the path the client asked for.
                    request.path = scope[TWIN_SCOPE_KEY]
                response = self._sync.get_response(request)
                response._handler_class = self.__class__  # type: ignore[attr-defined]
            assert response is not None
            if not response.streaming:
                response.close()
            return response




def path_info(scope: dict[str, Any]) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


# --------------------------------------------------------------------------- #
# Applying them
# --------------------------------------------------------------------------- #


def apply() -> list[str]:
    """Apply every speed-up whose dependency is at the version it was
    written for; returns their names. Call before the ASGI application is
    imported (``mq serve`` does)."""
    import django

    applied = []
    if django.VERSION[:2] == DJANGO_VERSION:
        import django.core.asgi

        # get_asgi_application() builds the handler it finds here.
        django.core.asgi.ASGIHandler = ReusedThreadsASGIHandler  # type: ignore[attr-defined,misc]
        applied.append("handler")
    else:
        log.warning("Django %s is not %s: its ASGI handler is used as shipped", django.__version__, DJANGO_VERSION)
    if patch_twisted_and_daphne():
        applied += ["content-type cache", "one access log", "finished requests forgotten"]
    return applied


def patch_twisted_and_daphne() -> bool:
    """Speed-ups 2-4, where Twisted and daphne are the versions they were
    written for; returns whether they were applied."""
    import daphne
    import twisted

    if (twisted.__version__, daphne.__version__) != (TWISTED_VERSION, DAPHNE_VERSION):
        log.warning(
            "Twisted %s / daphne %s are not %s / %s: they run as shipped",
            twisted.__version__,
            daphne.__version__,
            TWISTED_VERSION,
            DAPHNE_VERSION,
        )
        return False
    if not getattr(patch_twisted_and_daphne, "applied", False):
        _patch_twisted_and_daphne()
        patch_twisted_and_daphne.applied = True  # type: ignore[attr-defined]
    return True


def _patch_twisted_and_daphne() -> None:
    import daphne.http_protocol
    import daphne.server
    import twisted.web.http

    twisted.web.http._parseContentType = lru_cache(maxsize=256)(twisted.web.http._parseContentType)

    def no_twisted_access_log(self: object, request: object) -> None:
        """daphne writes the access log (its own, the one operators read)."""

    daphne.http_protocol.HTTPFactory.log = no_twisted_access_log  # type: ignore[method-assign]
    # twisted.web.http is a deprecation proxy: every `http.Request...` daphne
    # looks up per request went through two __getattribute__ hooks. daphne uses
    # none of the deprecated names; give it the module itself.
    daphne.http_protocol.http = object.__getattribute__(twisted.web.http, "_module")

    protocol_disconnected = daphne.server.Server.protocol_disconnected
    create_application = daphne.server.Server.create_application

    def forget_if_finished(server: daphne.server.Server, protocol: object) -> None:
        details = server.connections.get(protocol)
        if details is None or "disconnected" not in details:
            return
        instance = details.get("application_instance")
        if instance is None or not instance.done():
            return
        if not instance.cancelled() and instance.exception() is not None:
            return
        del server.connections[protocol]

    def disconnected(self: daphne.server.Server, protocol: object) -> None:
        protocol_disconnected(self, protocol)
        forget_if_finished(self, protocol)

    def create(self: daphne.server.Server, protocol: object, scope: dict[str, Any]) -> object:
        queue = create_application(self, protocol, scope)
        instance = self.connections.get(protocol, {}).get("application_instance")
        if instance is not None:
            instance.add_done_callback(lambda _: forget_if_finished(self, protocol))
        return queue

    daphne.server.Server.protocol_disconnected = disconnected  # type: ignore[method-assign]
    daphne.server.Server.create_application = create  # type: ignore[method-assign]
