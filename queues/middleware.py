"""Middleware that works on both sides of Django's sync/async divide, so an
async view (long polling) never gets pushed into a thread by our stack, and
an API call does not pay for the browser pages' middleware."""

from __future__ import annotations

import time
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin


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


# Machine endpoints: token- or signature-authenticated, no cookies, no pages.
MACHINE_PREFIXES = ("/api/", "/sqs", "/healthz", "/metrics")


def is_machine(request: HttpRequest) -> bool:
    return request.path_info.startswith(MACHINE_PREFIXES)


class OnTheLoop(MiddlewareMixin):
    """A Django middleware whose hooks only look at the request and set
    headers (no database, nothing that blocks), run on the event loop.

    Under ASGI, Django runs a sync middleware's ``process_request`` and
    ``process_response`` through ``sync_to_async``: two thread hand-offs per
    middleware per request, the largest part of a small API call's cost."""

    async def __acall__(self, request: HttpRequest) -> Any:
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)  # type: ignore[misc]
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class PagesOnly(MiddlewareMixin):
    """A Django middleware for the browser pages (sessions, CSRF, login,
    flash messages) that machine endpoints skip: they carry a token, never a
    cookie, and should not pay its thread hand-offs."""

    def __call__(self, request: HttpRequest) -> Any:
        if not self.async_mode and is_machine(request):
            return self.get_response(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        if is_machine(request):
            return await self.get_response(request)  # type: ignore[misc]
        return await super().__acall__(request)


class CsrfViewMiddleware(PagesOnly, csrf.CsrfViewMiddleware):
    def process_view(self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any) -> Any:
        # A machine endpoint carries a token, never a cookie: there is no
        # session to forge a request with. Django calls process_view even
        # where PagesOnly skipped process_request, and without the cookie it
        # would refuse every unsafe method at a view that is not exempt
        # (ninja's docs and openapi.json, its root), a 403 before the API
        # could answer 404 or 405.
        if is_machine(request):
            return None
        return super().process_view(request, callback, callback_args, callback_kwargs)

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if self.async_mode:
            # Django adapts a sync process_view with sync_to_async: a thread
            # hand-off even when the view is exempt. Machine endpoints are.
            sync_process_view = self.process_view
            sync_view = sync_to_async(sync_process_view, thread_sensitive=True)

            async def process_view(request: HttpRequest, view: Any, args: Any, kwargs: Any) -> Any:
                if is_machine(request):
                    return None
                return await sync_view(request, view, args, kwargs)

            self.process_view = process_view  # type: ignore[method-assign,assignment]


class SecurityMiddleware(OnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(OnTheLoop, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class SessionMiddleware(PagesOnly, sessions.SessionMiddleware):
    pass


class AuthenticationMiddleware(PagesOnly, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(PagesOnly, messages.MessageMiddleware):
    pass
