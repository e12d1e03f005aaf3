"""ASGI entry point: HTTP through Django, websockets through Channels: the
API's consume streams (bearer tokens) and the dashboard's (sessions)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mqadmin.settings")

from functools import lru_cache

import django
import twisted.web.http

# Twisted, under daphne, parses the Content-Type of every POST through the
# email package to decide whether to decode a form body into request.args,
# which daphne never reads: 8 % of a small API call's CPU. The answer
# depends only on the header's bytes, and clients send the same few.
twisted.web.http._parseContentType = lru_cache(maxsize=256)(twisted.web.http._parseContentType)

import daphne.http_protocol  # noqa: E402


def _no_twisted_access_log(self: object, request: object) -> None:
    """daphne writes the access log (its own, the one operators read).
    Twisted's factory formatted a second line per request into its legacy
    log, which daphne hands to a logger nobody shows: 3-5 % of a call."""


daphne.http_protocol.HTTPFactory.log = _no_twisted_access_log  # type: ignore[method-assign]
# twisted.web.http is a deprecation proxy: every `http.Request...` daphne
# looks up per request went through two __getattribute__ hooks. daphne uses
# none of the deprecated names; give it the module itself.
daphne.http_protocol.http = object.__getattribute__(twisted.web.http, "_module")

import daphne.server  # noqa: E402

# daphne keeps every request (each one is a "protocol") in Server.connections
# until its once-a-second checker reaps it, and its every-other-second
# timeout checker visits them all too. At 700 requests a second that pass
# held the event loop 6 ms each second (8 us a request), longer the busier
# the server. A request whose response went out and whose application
# finished cleanly is forgotten at once instead; one that raised is left to
# the checker, which logs it as before.
_protocol_disconnected = daphne.server.Server.protocol_disconnected
_create_application = daphne.server.Server.create_application


def _forget_if_finished(server: daphne.server.Server, protocol: object) -> None:
    details = server.connections.get(protocol)
    if details is None or "disconnected" not in details:
        return
    instance = details.get("application_instance")
    if instance is None or not instance.done():
        return
    if not instance.cancelled() and instance.exception() is not None:
        return
    del server.connections[protocol]


def _disconnected(self: daphne.server.Server, protocol: object) -> None:
    _protocol_disconnected(self, protocol)
    _forget_if_finished(self, protocol)


def _create(self: daphne.server.Server, protocol: object, scope: dict) -> object:
    queue = _create_application(self, protocol, scope)
    instance = self.connections.get(protocol, {}).get("application_instance")
    if instance is not None:
        instance.add_done_callback(lambda _: _forget_if_finished(self, protocol))
    return queue


daphne.server.Server.protocol_disconnected = _disconnected  # type: ignore[method-assign]
daphne.server.Server.create_application = _create  # type: ignore[method-assign]

# Django must be set up before anything imports models.
django.setup(set_prefix=False)

from mqadmin.handlers import ReusedThreadsASGIHandler  # noqa: E402

django_asgi_app = ReusedThreadsASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from queues.api.stream import ConsumeStream, PublishStream, SocketApp  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files are served by the app itself so `make run` needs no
        # web server in front; a proxy or CDN may take over in production.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": URLRouter(
            [
                # A bearer token, not a cookie: no origin to check, no session.
                path("api/v1/queues/<str:name>/consume", SocketApp(ConsumeStream)),  # type: ignore[arg-type]
                path("api/v1/queues/<str:name>/publish", SocketApp(PublishStream)),  # type: ignore[arg-type]
                re_path(r"", AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
            ]
        ),
    }
)
