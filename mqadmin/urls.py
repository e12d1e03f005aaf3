from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from queues.api import api
from queues.metrics import metrics_view
from queues.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("dashboard.urls")),
]

handler404 = "queues.views.not_found"
handler500 = "queues.views.server_error"
