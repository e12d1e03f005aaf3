from __future__ import annotations

from django.urls import path

from . import views

app_name = "dashboard"
urlpatterns = [
    path("", views.index, name="index"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("queues/<str:name>/", views.queue_detail, name="queue"),
    path("queues/<str:name>/pause", views.pause, name="pause"),
    path("queues/<str:name>/resume", views.resume, name="resume"),
    path("queues/<str:name>/purge", views.purge, name="purge"),
    path("queues/<str:name>/redrive", views.redrive, name="redrive"),
]
