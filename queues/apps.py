from __future__ import annotations

import sys
from pathlib import Path

from django.apps import AppConfig

# The Python client is a package of its own (clients/python), importable
# without Django; `mq worker`, `mq demo` and `mq bench` use it from this checkout.
CLIENT_PATH = str(Path(__file__).resolve().parent.parent / "clients" / "python")


class QueuesConfig(AppConfig):
    name = "queues"
    verbose_name = "Message queues"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if CLIENT_PATH not in sys.path:
            sys.path.append(CLIENT_PATH)
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
