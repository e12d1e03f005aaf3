from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Operator dashboard"

    def ready(self) -> None:
        # The aggregator runs as a monitor tick hook (only the leader's
        # runs); every process flushes the events it commits.
        from . import publisher

        publisher.install()
