from __future__ import annotations

from django.apps import AppConfig


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Message queues"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401 - registers the system checks
            health,
            monitor,
        )

        # Consumer health runs in every monitor tick.
        if health.check_consumers not in monitor.TICK_HOOKS:
            monitor.TICK_HOOKS.append(health.check_consumers)
