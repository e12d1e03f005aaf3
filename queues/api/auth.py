"""Bearer-token authentication and scope checks for the JSON API."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja.security import HttpBearer

from ..exceptions import Forbidden, TooManyFailures, Unauthorized
from ..models import Token

# A verified token is trusted this long without a query; revocation reaches
# other processes within this time (the revoking process forgets at once).
TOKEN_CACHE_SECONDS = 5.0

_cache: dict[str, tuple[Token, str, float]] = {}
_cache_lock = threading.Lock()


def forget(key_id: str | None = None) -> None:
    """Drop cached tokens (and, with no key id, the failure counts)."""
    if key_id is None:
        with _failures_lock:
            _failures.clear()
    with _cache_lock:
        if key_id is None:
            _cache.clear()
        else:
            _cache.pop(key_id, None)


# Failed authentications allowed per client address, and per key id, in a
# window; past it, what fails again from that address or with that key id is
# answered 429 until the window passes (slows guessing). Only failures are
# braked: a valid token is never refused, so one client failing behind a
# shared address (a NAT, a proxy whose headers are not trusted) cannot lock
# out the others, nor can anyone lock out a key id by failing with it.
AUTH_FAILURES_ALLOWED = 20
AUTH_FAILURE_WINDOW_SECONDS = 60.0
# What counts as a key id for the brake; anything else is braked by address only.
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")

_failures: dict[tuple[str, str], list[float]] = {}
_failures_lock = threading.Lock()


def _recent_failures(key: tuple[str, str], now: float) -> list[float]:
    stamps = [t for t in _failures.get(key, ()) if t > now - AUTH_FAILURE_WINDOW_SECONDS]
    if stamps:
        _failures[key] = stamps
    else:
        _failures.pop(key, None)
    return stamps


def brake(address: str, key_id: str | None = None) -> None:
    """Count a failed authentication from ``address`` with ``key_id`` (the
    one the client claimed, if any). Raises TooManyFailures instead when the
    address or the key id already failed AUTH_FAILURES_ALLOWED times in the
    window; the caller raises its own error otherwise."""
    keys = [("address", address)]
    if key_id and _KEY_ID.fullmatch(key_id):
        keys.append(("key id", key_id))
    now = time.monotonic()
    with _failures_lock:
        for key in keys:
            stamps = _recent_failures(key, now)
            if len(stamps) >= AUTH_FAILURES_ALLOWED:
                retry = max(1, int(stamps[0] + AUTH_FAILURE_WINDOW_SECONDS - now) + 1)
                kind, value = key
                raise TooManyFailures(
                    f"Too many failed authentications with this {kind} ({value}); retry in {retry} s.",
                    retry_after=retry,
                )
        for key in keys:
            _failures[key] = [*_recent_failures(key, now), now][-AUTH_FAILURES_ALLOWED:]
        if len(_failures) > 100_000:  # bound memory under an address-spraying attack
            _failures.clear()


def _cached(key_id: str, secret: str, now: float) -> Token | None:
    with _cache_lock:
        cached = _cache.get(key_id)
    if cached and cached[2] > now and cached[1] == secret:
        return cached[0]
    return None


def verify(raw: str) -> Token:
    """The active token for ``<key id>.<secret>``; raises Unauthorized."""
    key_id, sep, secret = raw.strip().partition(".")
    if not sep or not key_id or not secret or len(raw) > 200:
        raise Unauthorized("Malformed API token: expected <key id>.<secret>.")
    now = time.monotonic()
    cached = _cached(key_id, secret, now)
    if cached is not None:
        return cached
    token = Token.objects.active().filter(key_id=key_id).first()
    # Compare in constant time even when the key id is unknown.
    if token is None:
        Token(secret_hash="0" * 64).check_secret(secret)
        raise Unauthorized("Unknown or revoked API token.")
    if not token.check_secret(secret):
        raise Unauthorized("Unknown or revoked API token.")
    with _cache_lock:
        _cache[key_id] = (token, secret, now + TOKEN_CACHE_SECONDS)
    token.touch()
    return token


def _bearer(header: str) -> str | None:
    """The ``<token>`` of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, value = header.partition(" ")
    return value if scheme.lower() == "bearer" and value else None


def lately_verified(header: str) -> Token | None:
    """The token of an ``Authorization`` header when it was verified within
    TOKEN_CACHE_SECONDS (no query: fit for the event loop), else None."""
    value = _bearer(header)
    if value is None:
        return None
    key_id, _, secret = value.strip().partition(".")
    return _cached(key_id, secret, time.monotonic()) if key_id and secret else None


def authenticate(header: str, address: str) -> Token:
    """The active token of an ``Authorization: Bearer <token>`` header sent
    from ``address``; raises Unauthorized, or TooManyFailures when the token
    fails and that address or key id failed too often (``brake``). A
    missing header is not a failure (nobody guessed anything). May query:
    not on the loop."""
    if not header:
        raise Unauthorized("Missing Authorization header: send Authorization: Bearer <token>.")
    value = _bearer(header)
    try:
        if value is None:
            raise Unauthorized("Authorization must be 'Bearer <token>'.")
        return verify(value)
    except Unauthorized:
        brake(address, value.strip().partition(".")[0] if value else None)
        raise


def request_token(request: HttpRequest) -> Token:
    """The token of a request's Authorization header (``authenticate``)."""
    return authenticate(request.headers.get("Authorization", ""), request.META.get("REMOTE_ADDR") or "unknown")


class BearerAuth(HttpBearer):
    """``on_loop=True`` for async views: a token verified lately is accepted
    on the event loop; only one that needs its database lookup goes to the
    request's thread (ninja would send every check there)."""

    def __init__(self, *, on_loop: bool = False) -> None:
        super().__init__()
        self.is_async = on_loop  # what ninja looks at

    def authenticate(self, request: HttpRequest, token: str) -> Token:
        return verify(token)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._on_loop(request)
        return self._check(request)

    async def _on_loop(self, request: HttpRequest) -> Token:
        token = lately_verified(request.headers.get("Authorization", ""))
        if token is not None:
            return token
        return await sync_to_async(self._check)(request)

    def _check(self, request: HttpRequest) -> Token:
        return request_token(request)


def require(request: HttpRequest, scope: str, queue_name: str | None = None) -> Token:
    return allowed(request.auth, scope, queue_name)  # type: ignore[attr-defined]


def allowed(token: Token, scope: str, queue_name: str | None = None) -> Token:
    """``token``, if its queue pattern and scope allow this; raises Forbidden
    saying which refuses (the pattern first: a queue outside it is refused
    whatever the scope)."""
    if queue_name is not None and not token.sees(queue_name):
        raise Forbidden(f"This token may not use queue {queue_name[:100]!r} (its queues: {token.queue_pattern!r}).")
    if not token.allows(scope):
        # str(): a Scope member's repr is its Python name (Scope.CONSUME).
        raise Forbidden(f"This token lacks the {scope!s} scope.")
    return token
