"""Fuzz every API operation from our own OpenAPI document (schemathesis):
no input gets a 500, every error has the contract's shape, and a rejected
request changes nothing."""

from __future__ import annotations

import json

import pytest
import schemathesis
from django.db.models import Sum
from hypothesis import HealthCheck, settings

from mqadmin.wsgi import application
from queues import broker
from queues.models import Consumer, Message, Queue, QueueStats, QueueStatsDelta

# The streams, /healthz and /metrics are in the document as paths only:
# ninja does not serve them, and they are not the JSON API this fuzzes.
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application).exclude(tag=["streams", "operations"])

FUZZ_QUEUE = "fuzz"


def state() -> tuple:
    deltas = QueueStatsDelta.objects.aggregate(r=Sum("ready"), d=Sum("delayed"), f=Sum("in_flight"), x=Sum("dead_state"))
    return (
        Queue.objects.count(),
        Message.objects.count(),
        Consumer.objects.count(),
        tuple(QueueStats.objects.order_by("queue_id").values_list("ready", "in_flight", "delayed", "dead_state")),
        tuple(deltas.values()),
        tuple(Message.objects.order_by("id").values_list("id", "state", "lease_token")),
    )


@pytest.fixture
def fuzz_token(db: None):  # type: ignore[no-untyped-def]
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from conftest import make_token

    # As Django's test client does: the requests run inside this test's
    # transaction, so the handler must not close the connection after each.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield make_token("produce,consume,admin")
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_breaks_the_api(case, fuzz_token):
    queue = Queue.objects.filter(name=FUZZ_QUEUE).first()
    if queue is None:
        queue, _ = broker.put_queue(FUZZ_QUEUE, {})
        broker.publish(queue, [broker.NewMessage(body=b'{"n": 1}'), broker.NewMessage(body=b'"two"', group="g")])
    if "name" in (case.path_parameters or {}) and case.method != "PUT":
        case.path_parameters["name"] = FUZZ_QUEUE
    before = state()
    response = case.call(headers={"Authorization": f"Bearer {fuzz_token}"})
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
    if response.status_code >= 400:
        payload = json.loads(response.text)
        assert set(payload) == {"error"}, payload
        assert isinstance(payload["error"]["code"], str) and payload["error"]["code"]
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
        assert state() == before, (case.method, case.formatted_path, case.body, response.text[:300])
