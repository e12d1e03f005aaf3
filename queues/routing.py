"""The API's websocket routes: consume and publish streams (a bearer token,
not a cookie: no origin to check, no session)."""

from __future__ import annotations

from django.urls import path

from .api.publish_stream import PublishStream
from .api.stream import ConsumeStream, SocketApp

websocket_urlpatterns = [
    path("api/v1/queues/<str:name>/consume", SocketApp(ConsumeStream)),  # type: ignore[arg-type]
    path("api/v1/queues/<str:name>/publish", SocketApp(PublishStream)),  # type: ignore[arg-type]
]
