"""What `mq serve` changes (queues/speedups.py) in daphne and Twisted, per request, for speed:
each change must keep what users see (daphne's access log) and drop only
work whose result nobody reads."""

from __future__ import annotations

import io
import types
from typing import Any

import daphne.http_protocol
import twisted.web.http
from twisted.web.test.requesthelper import DummyRequest

from queues import speedups

speedups.patch_twisted_and_daphne()  # as `mq serve` does


def test_twisted_formats_no_second_access_log_line() -> None:
    # daphne writes the access log operators read; Twisted's factory used to
    # format another line per request into a log nobody shows.
    factory = daphne.http_protocol.HTTPFactory(server=None)
    factory.startFactory()
    sink = io.StringIO()
    factory._logFile = sink
    request = DummyRequest([b"healthz"])
    request.method = b"GET"
    request.code, request.sentLength = 200, 2
    factory.log(request)
    assert sink.getvalue() == ""
    # Plain Twisted still logs (the change is daphne's factory only).
    plain = twisted.web.http.HTTPFactory()
    plain.startFactory()
    plain._logFile = sink
    plain.log(request)
    assert "\"GET " in sink.getvalue()


def test_daphne_reads_twisted_http_without_the_deprecation_proxy() -> None:
    assert type(daphne.http_protocol.http) is types.ModuleType
    assert daphne.http_protocol.http.Request is twisted.web.http.Request
    # The lookups Content-Type parsing did through the email package are cached.
    assert twisted.web.http._parseContentType(b"application/json") == twisted.web.http._parseContentType(b"application/json")
    assert twisted.web.http._parseContentType.cache_info().hits >= 1  # type: ignore[attr-defined]


def test_a_finished_request_is_forgotten_at_once_and_a_failed_one_left_for_daphnes_checker() -> None:
    # daphne reaped finished requests only in a once-a-second pass over all
    # of them, on the event loop: the busier the server, the longer the stall.
    import asyncio

    import daphne.server

    async def main() -> None:
        server = daphne.server.Server.__new__(daphne.server.Server)  # no reactor needed
        server.connections = {}
        finish = asyncio.Event()

        async def app(scope: dict, receive: object, send: object) -> None:
            await finish.wait()
            if scope["path"] == "/boom":
                raise RuntimeError("boom")

        server.application = app
        ok, failed, streaming = object(), object(), object()
        for protocol, path in ((ok, "/ok"), (failed, "/boom"), (streaming, "/ok")):
            server.connections[protocol] = {}
            server.create_application(protocol, {"type": "http", "path": path})
        server.protocol_disconnected(ok)  # the response went out; the app is still returning
        server.protocol_disconnected(failed)
        assert ok in server.connections
        finish.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert ok not in server.connections  # forgotten as its application returned
        assert failed in server.connections  # daphne's checker logs its exception
        assert streaming in server.connections  # still connected
        server.protocol_disconnected(streaming)
        assert streaming not in server.connections  # its application had already returned
        server.connections[failed]["application_instance"].exception()  # retrieved: no "never retrieved" noise

    asyncio.run(main())


def test_a_speed_up_written_for_another_version_is_skipped(monkeypatch: Any) -> None:
    # A patch of a library at a version it was not written for could break
    # the server in ways no test here sees: it is not applied at all.
    import django.core.asgi

    handler = django.core.asgi.ASGIHandler  # type: ignore[attr-defined]
    monkeypatch.setattr(speedups, "DJANGO_VERSION", (0, 0))
    monkeypatch.setattr(speedups, "TWISTED_VERSION", "0.0.0")
    assert speedups.apply() == []
    assert django.core.asgi.ASGIHandler is handler  # type: ignore[attr-defined]
    assert speedups.patch_twisted_and_daphne() is False


def test_the_handler_knows_no_paths_of_the_api_only_the_sync_twins_it_declares() -> None:
    # The receive names its sync twin; the handler reads it from the URL
    # conf, whatever the path.
    sent = speedups.route("/api/v1/queues/jobs/messages")
    assert sent.sync and sent.twin is None
    received = speedups.route("/api/v1/queues/jobs/receive")
    assert not received.sync and received.twin is not None
    assert received.twin_path == "/api/v1/queues/jobs/receive-now"
    assert received.twin.when(b'{"max": 3}') and not received.twin.when(b'{"wait": 2}')


def test_request_threads_are_kept_while_demand_is_high_and_trimmed_once_it_falls(monkeypatch: Any) -> None:
    # A fleet of 200 long polls polling again at once: the threads of the
    # last round are all still there, none started anew; two minutes after
    # the last such burst the surplus is shut down, a few per request.
    monkeypatch.setattr(speedups, "KEEP_IDLE", 8)
    now = [1000.0]
    monkeypatch.setattr(speedups.time, "monotonic", lambda: now[0])
    handler = speedups.ReusedThreadsASGIHandler.__new__(speedups.ReusedThreadsASGIHandler)
    handler._idle = []
    handler._short_at = -speedups.IDLE_LINGER_SECONDS
    first = [handler.borrow() for _ in range(200)]
    for executor in first:
        handler.give_back(executor)
    assert len(handler._idle) == 200
    now[0] += 10
    again = [handler.borrow() for _ in range(200)]
    assert {id(e) for e in again} == {id(e) for e in first}
    for executor in again:
        handler.give_back(executor)
    now[0] += speedups.IDLE_LINGER_SECONDS + 1
    handler.give_back(handler.borrow())
    assert len(handler._idle) == 200 - speedups.TRIM_PER_REQUEST - 1  # and the one it used
    for _ in range(100):
        handler.give_back(handler.borrow())
    assert len(handler._idle) == speedups.KEEP_IDLE


def test_what_a_view_defers_runs_once_its_response_is_sent_and_a_late_one_at_once() -> None:
    import contextvars

    ran: list[str] = []
    assert not speedups.after_response(lambda: ran.append("outside"))  # not in such a request
    pending = speedups.AfterResponse()
    context = contextvars.copy_context()
    context.run(speedups._after_response.set, pending)
    assert context.run(speedups.after_response, lambda: ran.append("handed"))
    assert ran == []
    pending.run()  # the response is out
    assert ran == ["handed"]
    assert not context.run(speedups.after_response, lambda: ran.append("late"))


def test_a_request_thread_that_holds_nothing_ends_its_request_on_the_loop() -> None:
    # A waiting receive gave its connection back on its thread: the request's
    # end needs no hand-off to that thread. A later job there uses it again.
    executor = speedups.RequestThread()
    try:
        executor.submit(lambda: None).result(5)
        assert executor.used
        executor.submit(speedups.holds_nothing).result(5)
        assert not executor.used
        executor.submit(lambda: None).result(5)
        assert executor.used
    finally:
        executor.shutdown()
    speedups.holds_nothing()  # not on a request's thread: nothing happens
