"""Operational endpoints outside the API: health, and JSON error pages."""

from __future__ import annotations

import time

from django.db import connection
from django.http import HttpRequest, HttpResponse

from .api.errors import error_response, json_response
from .exceptions import NotFound


def healthz(request: HttpRequest) -> HttpResponse:
    from . import monitor

    body: dict[str, object] = {"status": "ok", "database": "ok", "vendor": connection.vendor}
    status = 200
    start = time.perf_counter()
    try:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        body["database_ms"] = round((time.perf_counter() - start) * 1000, 2)
    except Exception as exc:  # any failure to reach the database is "down"
        body.update(status="unavailable", database="unavailable", detail=type(exc).__name__)
        status = 503
    body["monitor"] = monitor.status()
    return json_response(body, status)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return error_response(NotFound.code, f"No endpoint at {request.path}.", 404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Exception())


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return error_response("internal_error", "Something went wrong on our side; it was logged.", 500)
    from django.views.defaults import server_error as default

    return default(request)
