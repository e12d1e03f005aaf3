"""What mqadmin/asgi.py changes in daphne and Twisted, per request, for speed:
each change must keep what users see (daphne's access log) and drop only
work whose result nobody reads."""

from __future__ import annotations

import io
import types

import daphne.http_protocol
import twisted.web.http
from twisted.web.test.requesthelper import DummyRequest

import mqadmin.asgi  # noqa: F401 - applies the changes, as `mq serve` does


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
