from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path

from queues.api import urls as api_urls
from queues.metrics import metrics_view
from queues.sqs.views import endpoint as sqs_endpoint
from queues.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api_urls()),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    # SQS-compatible endpoint; also answers at queue URLs (/sqs/<name>).
    re_path(r"^sqs(?:/.*)?$", sqs_endpoint, name="sqs"),
    path("", include("dashboard.urls")),
]

handler404 = "queues.views.not_found"
handler500 = "queues.views.server_error"
