"""Settings for mqadmin, read from the environment (12-factor).

Every knob is optional; the defaults give the embedded setup: SQLite in
``db.sqlite3`` and an in-memory channel layer. Bad values fail loudly at start
with ``ImproperlyConfigured`` instead of being half-understood.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be on/off (or true/false, 1/0), not {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (upper case), whatever the case it is written in."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().upper()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)} (any case), not {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# Test runs in parallel (several developers, CI) must not share a test
# database: each run gets its own, named after its process.
_TEST_DB_SUFFIX = os.environ.get("MQ_TEST_DB_SUFFIX") or str(os.getpid())


def database_from_url(url: str) -> dict:
    """Turn ``DATABASE_URL`` into a Django database dict tuned for a queue."""
    if not url.startswith(("sqlite:", "postgres:", "postgresql:", "pgsql:")):
        raise ImproperlyConfigured(
            f"DATABASE_URL must be sqlite:///path or postgres://..., not {url!r}"
        )
    config: dict[str, Any] = dict(dj_database_url.parse(url))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {
            # Writers take the lock at BEGIN, so two claims never both read the
            # same ready row and then fight to upgrade their locks (SQLITE_BUSY).
            "transaction_mode": "IMMEDIATE",
            # Seconds a writer waits for the lock before "database is locked".
            "timeout": 20,
            # WAL lets readers run beside the single writer; NORMAL sync is
            # durable across process crashes (fsync at checkpoints).
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"
            ),
        }
        # The test database must be a file: threads in concurrency tests each
        # open their own connection, which an in-memory database cannot share.
        config["TEST"] = {"NAME": str(BASE_DIR / f"test-db-{_TEST_DB_SUFFIX}.sqlite3")}
    else:
        config["ENGINE"] = "django.db.backends.postgresql"
        config["TEST"] = {"NAME": f"test_mqadmin_{_TEST_DB_SUFFIX}"}
        config["CONN_MAX_AGE"] = 0
        options = config.setdefault("OPTIONS", {})
        if env_bool("MQ_DB_POOL", True):
            # psycopg's pool: a request borrows a warm connection instead of
            # paying a new backend process (several ms) per request.
            options["pool"] = {
                "min_size": env_int("MQ_DB_POOL_MIN", 2, minimum=0),
                "max_size": env_int("MQ_DB_POOL_MAX", 20, minimum=1),
                "timeout": 10,
            }
        if env_bool("MQ_DB_PREPARE", True):
            # Lets the broker's hot statements be prepared (queues.backends.
            # prepared_cursor); Django's own cursors bind on the client and
            # never prepare. Off for a pooler that cannot keep prepared
            # statements (PgBouncer before 1.21 in transaction mode).
            options["prepare_threshold"] = 5  # psycopg's default: prepared at the 5th run
    return config


SECRET_KEY_DEFAULT = "mqadmin-insecure-development-key-change-me"
SECRET_KEY = env_str("SECRET_KEY", SECRET_KEY_DEFAULT)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1)

_LOCAL = {"127.0.0.1", "localhost", "::1", "[::1]", "testserver"}
if DEBUG and SECRET_KEY == SECRET_KEY_DEFAULT and (
    HOST not in _LOCAL or any(h not in _LOCAL for h in ALLOWED_HOSTS)
):
    raise ImproperlyConfigured(
        "Refusing to start: DEBUG is on with the default SECRET_KEY while serving beyond this machine. "
        "Set SECRET_KEY (and DEBUG=off) for anything but local development."
    )

# Django's W001-W003 look for its own middleware by name; ours are subclasses
# of it (see MIDDLEWARE), and mq.W004 checks for them by class instead.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]
# HTTPS=on: served behind a TLS-terminating proxy (see README, Deployment).
HTTPS = env_bool("HTTPS", False)
# Believe X-Forwarded-For/-Proto: set when a reverse proxy of ours is in front.
TRUST_PROXY_HEADERS = env_bool("TRUST_PROXY_HEADERS", HTTPS)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading commits the whole domain to HTTPS in browsers for good:
        # the operator's decision (SECURE_HSTS_PRELOAD=on), not a default.
        SILENCED_SYSTEM_CHECKS.append("security.W021")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",
    "queues",
    "dashboard",
]

# Every middleware here is async-capable, so async views (long polling) run
# on the event loop without a thread held per waiting request.
# Django's own middleware, in queues.middleware subclasses: the header-only
# ones run on the event loop, the session/login/messages ones are skipped by
# the machine endpoints (/api/, /sqs, /healthz, /metrics). Each would
# otherwise cost two thread hand-offs per request under ASGI.
MIDDLEWARE = [
    "queues.middleware.SecurityMiddleware",
    "queues.metrics.RequestTimer",
    "queues.api.errors.RejectionLog",
    "queues.api.errors.JSONErrorsMiddleware",
    "queues.middleware.SessionMiddleware",
    "queues.middleware.CommonMiddleware",
    "queues.middleware.CsrfViewMiddleware",
    "queues.middleware.AuthenticationMiddleware",
    "queues.middleware.MessageMiddleware",
    "queues.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mqadmin.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "mqadmin.wsgi.application"
ASGI_APPLICATION = "mqadmin.asgi.application"

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYER_URL = env_str("CHANNEL_LAYER_URL", "")
if CHANNEL_LAYER_URL:
    if not CHANNEL_LAYER_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(
            f"CHANNEL_LAYER_URL must be redis://host:port/db, not {CHANNEL_LAYER_URL!r}"
        )
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [CHANNEL_LAYER_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

LOGIN_URL = "/admin/login/"

# Bounds every request body: a batch of 1000 messages must fit, a runaway
# client must not exhaust memory. Oversized requests get 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MQ_MAX_REQUEST_BYTES", 10 * 1024 * 1024, minimum=1024)

# --- mqadmin options (read lazily through queues.conf so tests can override) ---
MQ_MONITOR = env_bool("MQ_MONITOR", True)
# PostgreSQL with autovacuum off: the monitor vacuums the queue tables itself.
MQ_VACUUM = env_bool("MQ_VACUUM", True)
# `mq serve` applies its server speed-ups (queues.speedups); off: the
# server libraries run as shipped.
MQ_SPEEDUPS = env_bool("MQ_SPEEDUPS", True)
# Processes `mq serve` runs on its port (above 1: PostgreSQL and Redis only).
MQ_WORKERS = env_int("MQ_WORKERS", 1, minimum=1)
# Connections one `mq serve` process holds at once (HTTP and websockets); one
# more gets 503 with Retry-After. 0: what its open-file limit allows (at most
# 10,000).
MQ_MAX_CONNECTIONS = env_int("MQ_MAX_CONNECTIONS", 0, minimum=0)
# /metrics without a token (it names every queue): for a scrape target
# reachable only from a private network.
MQ_METRICS_PUBLIC = env_bool("MQ_METRICS_PUBLIC", False)
MQ_DEDUP_WINDOW_SECONDS = env_int("MQ_DEDUP_WINDOW_SECONDS", 300, minimum=1)
MQ_HEARTBEAT_TIMEOUT_SECONDS = env_int("MQ_HEARTBEAT_TIMEOUT_SECONDS", 15, minimum=2)
# Consumers that left or died stay in the live lists (dashboard, GET /consumers)
# this long; the admin shows them until the monitor forgets them (a day).
MQ_CONSUMER_FORGET_SECONDS = env_int("MQ_CONSUMER_FORGET_SECONDS", 600, minimum=0)
MQ_MAX_WAIT_SECONDS = 20
# PostgreSQL: busy consume streams that claim on the event loop over a
# connection of their own, per process, outside the pool (queues.api.stream);
# the others claim on their threads over the pool. 0: all of them do.
MQ_STREAM_DB_CONNECTIONS = env_int("MQ_STREAM_DB_CONNECTIONS", 20, minimum=0)
# Claims and receipts (ack, nack, extend, release) commit without waiting for
# the WAL flush, on PostgreSQL; sends always wait. Why that loses no message:
# queues.broker.durability.
MQ_ASYNC_COMMIT = env_bool("MQ_ASYNC_COMMIT", False)

LOG_LEVEL = env_choice("MQ_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # Not propagated: daphne gives the root logger a handler of its own,
        # and every line would be printed twice.
        "mqadmin": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "queues": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        # Its WARNING per 4xx repeats the whole path (any length a client
        # sends) and no reason: queues.requests logs refusals instead
        # (queues.api.errors.RejectionLog). Errors (5xx) still come through.
        "django.request": {"level": "ERROR"},
    },
}
