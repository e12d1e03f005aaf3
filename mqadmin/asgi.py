"""ASGI entry point: HTTP through Django, websockets through Channels: the
API's consume streams (bearer tokens) and the dashboard's (sessions)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mqadmin.settings")

from django.core.asgi import get_asgi_application

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.core.exceptions import SuspiciousOperation  # noqa: E402
from django.http import FileResponse, Http404, HttpRequest, HttpResponse  # noqa: E402
from django.urls import re_path  # noqa: E402

from dashboard.routing import websocket_urlpatterns as dashboard_routes  # noqa: E402
from queues.routing import websocket_urlpatterns as api_routes  # noqa: E402


class StaticFiles(ASGIStaticFilesHandler):
    """Django's static files handler, where a path that would leave the
    static root, however it is spelled (``..``, ``%2e%2e``, encoded twice),
    is a 404 like any missing file. Django refuses such a path with
    SuspiciousFileOperation, which nothing between this handler and the
    server turns into a response (the server would answer 500)."""

    def serve(self, request: HttpRequest) -> HttpResponse | FileResponse:
        try:
            return super().serve(request)
        except SuspiciousOperation:
            raise Http404("No such file.") from None


application = ProtocolTypeRouter(
    {
        # Static files are served by the app itself so `make run` needs no
        # web server in front; a proxy or CDN may take over in production.
        "http": StaticFiles(django_asgi_app),
        "websocket": URLRouter(
            [
                *api_routes,
                re_path(r"", AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(dashboard_routes)))),
            ]
        ),
    }
)
