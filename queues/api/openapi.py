"""What the OpenAPI document says beside the JSON API's own operations: the
websocket streams (served by ASGI apps, not by ninja) and the operational
endpoints at the root (``/healthz``, ``/metrics``). Documented paths only:
ninja does not serve them, so it cannot describe them itself."""

from __future__ import annotations

from typing import Any

from .frames import ConsumeIn

README = "See the README's section “The API” for every frame and its fields."


def _upgrade(summary: str, description: str, query: list[dict[str, Any]], security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": "stream_" + summary.split()[0].lower(),
            "summary": summary,
            "description": description + "\n\n" + README,
            "tags": ["streams"],
            "security": security,
            "parameters": [
                {"in": "path", "name": "name", "required": True, "schema": {"type": "string"}},
                {
                    "in": "header",
                    "name": "Upgrade",
                    "required": True,
                    "description": "A websocket handshake (with `Connection: Upgrade`).",
                    "schema": {"type": "string", "enum": ["websocket"]},
                },
                *query,
            ],
            "responses": {
                "101": {"description": "Switching Protocols: the stream is open; frames are JSON text."},
            },
        }
    }


def _consume_query() -> list[dict[str, Any]]:
    schema = ConsumeIn.model_json_schema()
    return [
        {"in": "query", "name": name, "required": False, "schema": {k: v for k, v in field.items() if k != "title"}}
        for name, field in schema["properties"].items()
    ]


def extra_paths(security: list[dict[str, list[str]]]) -> dict[str, Any]:
    """Path entries for the streams, ``/healthz`` and ``/metrics``; the
    streams and /metrics take the API's bearer token (``security``)."""
    consume = _upgrade(
        "Consume stream",
        "The server pushes deliveries as they come, at most `prefetch` unacknowledged. It first sends "
        '`{"type": "ready", …}` (the prefetch, lease and consumer it granted), then '
        '`{"type": "messages", "messages": [...]}` (each as `receive` answers). The client sends '
        '`{"type": "ack"|"nack"|"extend", "receipts": [...], …}` (fields as the HTTP calls), answered by '
        '`messages` (with `acked`, `stale`), `nacked` or `extended`. A refused stream gets an `error` frame '
        "(`status` and the contract's `error`), then closes with 4000 + its status (4401, 4403, 4404, 4422). "
        "Closing applies the acks sent and makes what it held ready again at once.",
        _consume_query(),
        security,
    )
    publish = _upgrade(
        "Publish stream",
        'After its `{"type": "ready"}`, the client sends `{"type": "send", "id": …, "messages": [...]}` frames '
        "(messages as `POST /messages` takes them) without waiting; each is answered in order after its commit, "
        '`{"type": "sent", "id": …, "messages": [{"id", "duplicate"}]}` or an `error` frame with its `id`. '
        "Each frame is all or nothing.",
        [],
        security,
    )
    healthz = {
        "get": {
            "operationId": "healthz",
            "summary": "Health",
            "description": "No authentication. The database's and the monitor's state.",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Serving: the database answers.",
                    "content": {"application/json": {"schema": _health_schema("ok")}},
                },
                "503": {
                    "description": "The database does not answer.",
                    "content": {"application/json": {"schema": _health_schema("unavailable")}},
                },
            },
        }
    }
    metrics = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": "Per-queue counters (`mq_messages_sent_total` …), depths by state (`mq_queue_messages`), "
            "the oldest ready message's age and the API's latency, in Prometheus' text exposition format. "
            "For a token with the `metrics` (or `admin`) scope; for anyone where the server sets `MQ_METRICS_PUBLIC`.",
            "tags": ["operations"],
            "security": security,
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                },
                "401": {"description": "No token, or not a valid one."},
                "403": {"description": "The token lacks the `metrics` scope."},
            },
        }
    }
    return {
        "/api/v1/queues/{name}/consume": consume,
        "/api/v1/queues/{name}/publish": publish,
        "/healthz": healthz,
        "/metrics": metrics,
    }


def _health_schema(status: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": [status]},
            "database": {"type": "string", "enum": [status]},
            "vendor": {"type": "string", "description": "sqlite or postgresql"},
            "database_ms": {"type": "number", "description": "how long `SELECT 1` took (ms)"},
            "detail": {"type": "string", "description": "why the database is unavailable"},
            "monitor": {"type": "object", "description": "the background monitor's state"},
        },
        "required": ["status", "database", "monitor"],
    }
