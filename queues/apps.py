from __future__ import annotations

from django.apps import AppConfig


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Message queues"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from . import (
            checks,  # noqa: F401 - registers the system checks
            hashing,
            health,
            monitor,
        )

        # Consumer health runs in every monitor tick; SQLite connections learn
        # the FIFO-group weight used by the consistent-hashing claim.
        if health.check_consumers not in monitor.TICK_HOOKS:
            monitor.TICK_HOOKS.append(health.check_consumers)
        connection_created.connect(hashing.install_sqlite_function, dispatch_uid="mq_group_weight")
