"""Middleware that works on both sides of Django's sync/async divide, so an
async view (long polling) never gets pushed into a thread by our stack."""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse


class ResponseMiddleware:
    """Calls ``after(request, response, started)`` on every response; a
    subclass returns the response to send (the same one, or a new one)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        started = time.perf_counter()
        return self.after(request, self.get_response(request), started)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        return self.after(request, await self.get_response(request), started)

    def after(self, request: HttpRequest, response: HttpResponse, started: float) -> HttpResponse:
        raise NotImplementedError
