"""ASGI entry point: HTTP through Django, websockets through Channels."""

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

# Django must be set up before anything imports models.
django.setup(set_prefix=False)

from mqadmin.handlers import ReusedThreadsASGIHandler  # noqa: E402

django_asgi_app = ReusedThreadsASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files are served by the app itself so `make run` needs no
        # web server in front; a proxy or CDN may take over in production.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

