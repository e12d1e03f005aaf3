"""System checks: misconfiguration is reported at start, not discovered later."""

from __future__ import annotations

import sqlite3
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1", "testserver"}


@register()
def check_database(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    engine = settings.DATABASES["default"]["ENGINE"]
    errors: list[Error] = []
    if engine not in ("django.db.backends.sqlite3", "django.db.backends.postgresql"):
        errors.append(Error(f"mqadmin runs on SQLite or PostgreSQL, not {engine}.", id="mq.E001"))
    if engine == "django.db.backends.sqlite3" and sqlite3.sqlite_version_info < (3, 35):
        errors.append(
            Error(
                f"SQLite {sqlite3.sqlite_version} is too old: mqadmin needs 3.35+ (UPDATE ... RETURNING).",
                hint="Use a newer Python build, or PostgreSQL via DATABASE_URL.",
                id="mq.E002",
            )
        )
    return errors


@register(deploy=True)
def check_secrets(app_configs: Any = None, **kwargs: Any) -> list[Warning | Error]:
    from mqadmin.settings import SECRET_KEY_DEFAULT

    public = [h for h in settings.ALLOWED_HOSTS if h not in LOCAL_HOSTS]
    problems: list[Warning | Error] = []
    if settings.SECRET_KEY == SECRET_KEY_DEFAULT and public:
        problems.append(
            Error(
                "SECRET_KEY is the development default while serving " + ", ".join(public) + ".",
                hint="Set SECRET_KEY to a long random value.",
                id="mq.E003",
            )
        )
    return problems


# Django middleware that must be in MIDDLEWARE, itself or a subclass.
REQUIRED_MIDDLEWARE = {
    "django.middleware.security.SecurityMiddleware": "security headers (HSTS, nosniff) and the HTTPS redirect",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": "the X-Frame-Options header",
    "django.middleware.csrf.CsrfViewMiddleware": "CSRF protection of the admin's forms",
}


@register()
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    from django.utils.module_loading import import_string

    installed = [import_string(path) for path in settings.MIDDLEWARE]
    problems: list[Warning] = []
    for path, what in REQUIRED_MIDDLEWARE.items():
        required = import_string(path)
        if not any(isinstance(cls, type) and issubclass(cls, required) for cls in installed):
            problems.append(Warning(f"MIDDLEWARE has no {path} (or subclass of it): responses go without {what}.", id="mq.W004"))
    return problems


@register(Tags.database)
def check_autovacuum(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Warning]:
    """Run by `migrate` and `check --database default`: the messages table
    churns (every message is inserted, updated and deleted), so without
    autovacuum its dead rows pile up and every claim wades through them (the
    monitor stands in for it there: ``broker.vacuum_unvacuumed``)."""
    from django.db import connections

    problems: list[Warning] = []
    for alias in databases or []:
        conn = connections[alias]
        if conn.vendor != "postgresql":
            continue
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('autovacuum')")
            (setting,) = cur.fetchone()
        if setting != "on":
            problems.append(
                Warning(
                    f"PostgreSQL autovacuum is off on database {alias!r}: the mq monitor vacuums the queue "
                    "tables itself when their dead rows pass autovacuum's thresholds, but nothing vacuums the "
                    "other tables of this database.",
                    hint="Turn autovacuum on (postgresql.conf).",
                    id="mq.W005",
                )
            )
    return problems
