"""Prometheus metrics. Message counters come from the database counters, so
every process reports the whole broker's totals, not its own slice; request
latency is per process, as Prometheus expects of a histogram."""

from __future__ import annotations

import time
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .exceptions import MQError
from .middleware import ResponseMiddleware
from .models import Scope

REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_SECONDS = Histogram(
    "mq_http_request_duration_seconds",
    "Time to answer an API request.",
    ["method", "endpoint", "status"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25),
)

TOTALS = {
    "sent_total": ("mq_messages_sent", "Messages enqueued."),
    "received_total": ("mq_messages_received", "Deliveries (leases handed out)."),
    "acked_total": ("mq_messages_acked", "Messages acknowledged."),
    "nacked_total": ("mq_messages_nacked", "Messages given back as failed."),
    "redelivered_total": ("mq_messages_redelivered", "Leases expired or released, message back to ready."),
    "dead_lettered_total": ("mq_messages_dead_lettered", "Messages dead-lettered."),
    "purged_total": ("mq_messages_purged", "Messages deleted by purge."),
    "expired_total": ("mq_messages_expired", "Messages deleted by retention."),
}
DEPTHS = ("ready", "delayed", "in_flight", "dead")


class BrokerCollector(Collector):
    def describe(self) -> list[Metric]:
        # Describing would mean querying the database at import time.
        return []

    def collect(self) -> Iterator[Metric]:
        from . import broker, notify

        rows = broker.list_queues()
        counters = {k: CounterMetricFamily(name, doc, labels=["queue"]) for k, (name, doc) in TOTALS.items()}
        depth = GaugeMetricFamily("mq_queue_messages", "Messages stored, by state.", labels=["queue", "state"])
        age = GaugeMetricFamily("mq_queue_oldest_ready_age_seconds", "Age of the oldest ready message.", labels=["queue"])
        waiting = GaugeMetricFamily(
            "mq_waiting_receives", "Long-polling receives waiting in this process.", labels=["queue"]
        )
        now_waiting = notify.waiting()
        for queue, counts in rows:
            waiting.add_metric([queue.name], now_waiting.get(queue.id, 0))
            for key, family in counters.items():
                family.add_metric([queue.name], counts.totals.get(key, 0))
            for state in DEPTHS:
                depth.add_metric([queue.name, state], getattr(counts, state))
            age.add_metric([queue.name], counts.oldest_ready_age or 0.0)
        yield from counters.values()
        yield depth
        yield age
        yield waiting


REGISTRY.register(BrokerCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics, for a token with the metrics (or admin) scope; for
    anyone with MQ_METRICS_PUBLIC (they name every queue)."""
    from django.conf import settings

    if not settings.MQ_METRICS_PUBLIC:
        # Imported here: the API imports this module's registry.
        from .api.auth import allowed, request_token
        from .api.errors import from_mq_error

        try:
            allowed(request_token(request), Scope.METRICS)
        except MQError as exc:
            return from_mq_error(exc)
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


class RequestTimer(ResponseMiddleware):
    """Times /api/ requests for the latency histogram."""

    def after(self, request: HttpRequest, response: HttpResponse, started: float) -> HttpResponse:
        if request.path.startswith("/api/"):
            match = getattr(request, "resolver_match", None)
            endpoint = match.route if match else "unmatched"
            REQUEST_SECONDS.labels(request.method, endpoint, str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response
