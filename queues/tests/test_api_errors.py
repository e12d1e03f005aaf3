"""Every error the contract names, always as ``{"error": {"code", "message"}}``,
and no rejected request leaves anything half done."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from conftest import Api, make_token
from queues.models import Message, Queue, Token


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    assert set(response.data) == {"error"}, response.data
    error = response.data["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# --------------------------------------------------------------------- 400 --


@pytest.mark.parametrize("raw", ["{not json", '{"body": 1', "[1, 2", "\xff\xfe", '{"body": NaN}'])
def test_malformed_json_is_400(api, raw):
    api.make_queue("jobs")
    assert_error(api.post("queues/jobs/messages", raw=raw), 400, "bad_request")
    assert Message.objects.count() == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("queues/jobs/messages", {"body": 1, "priority": "5"}),
        ("queues/jobs/messages", {"body": 1, "delay": "10"}),
        ("queues/jobs/messages", {"body": 1, "headers": {"a": 1}}),
        ("queues/jobs/messages", {"body": 1, "headers": ["a"]}),
        ("queues/jobs/messages", {"body": 1, "group": 7}),
        ("queues/jobs/messages", {"messages": "all"}),
        ("queues/jobs/receive", {"max": "10"}),
        ("queues/jobs/ack", {"receipts": "abc"}),
        ("queues/jobs/ack", {"receipts": [1, 2]}),
        ("queues/jobs/nack", {"receipts": ["1.a"], "delay": "5"}),
        ("queues/jobs/extend", {"receipts": ["1.a"], "visibility_timeout": "5"}),
    ],
)
def test_wrong_types_are_400(api, path, body):
    api.make_queue("jobs")
    assert_error(api.post(path, body), 400, "bad_request")
    assert Message.objects.count() == 0


HUGE = 10**30  # past 64 bits: the JSON reader makes it a float


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("queues/jobs/messages", {"body": 1, "priority": 1e20}, "priority: 1e+20 is out of range"),
        ("queues/jobs/messages", {"body": 1, "priority": HUGE}, "priority: 1e+30 is out of range"),
        ("queues/jobs/messages", {"messages": [{"body": 1, "delay": -HUGE}]}, "messages.0.delay: -1e+30 is out of range"),
        ("queues/jobs/messages", {"body": 1, "priority": 2.5}, "priority: should be a whole number, not 2.5"),
        ("queues/jobs/messages", {"body": 1, "priority": 10}, "priority: Input should be less than or equal to 9"),
        ("queues/jobs/messages", {"body": 1, "priority": 2**64 - 1}, "priority: Input should be less than or equal to 9"),
        ("queues/jobs/receive", {"max": 1e20}, "max: 1e+20 is out of range"),
        ("queues/jobs/receive", {"max": 1.5}, "max: should be a whole number, not 1.5"),
        ("queues/jobs/receive", {"max": 5.0}, "max: should be an integer written without a fraction or exponent, not 5.0"),
        ("queues/jobs/receive", {"wait": 1e20}, "wait: Input should be less than or equal to 20"),
        ("queues/jobs/receive", {"visibility_timeout": HUGE}, "visibility_timeout: 1e+30 is out of range"),
        ("queues/jobs/nack", {"receipts": ["1." + "0" * 32], "delay": 1e20}, "delay: 1e+20 is out of range"),
        ("queues/jobs/extend", {"receipts": ["1." + "0" * 32], "visibility_timeout": 1e20}, "visibility_timeout: 1e+20 is out of range"),
        ("queues/jobs/redrive", {"max": HUGE}, "max: 1e+30 is out of range"),
        ("queues/jobs/redrive", {"max": 2**64 - 1}, "max: Input should be less than or equal to 9223372036854775807"),
        ("consumers", {"name": "c", "heartbeat_timeout": 1e20}, "heartbeat_timeout: 1e+20 is out of range"),
    ],
)
def test_numbers_out_of_range_or_not_whole_are_422_like_any_bad_value(api, path, body, message):
    """A JSON number is the right type wherever a number belongs: huge, not
    whole or past the field's range, it is an invalid value (422), never a
    type error (400) as a string in its place is."""
    api.make_queue("jobs")
    error = assert_error(api.post(path, body), 422, "invalid_value")
    assert error["message"] == message
    assert Message.objects.count() == 0


@pytest.mark.parametrize("setting", ["visibility_timeout", "max_deliveries", "retention", "delay", "max_message_bytes", "max_depth"])
def test_queue_settings_out_of_range_are_422_and_strings_400(api, setting):
    for number in (1e20, HUGE, 2.5):
        assert_error(api.put("queues/jobs", {setting: number}), 422, "invalid_value")
    assert_error(api.put("queues/jobs", {setting: "30"}), 400, "bad_request")
    assert_error(api.put("queues/jobs", {setting: True}), 400, "bad_request")
    assert not Queue.objects.exists()


def test_wrong_type_in_queue_settings_is_400(api):
    assert_error(api.put("queues/jobs", {"fifo": "yes"}), 400, "bad_request")
    assert_error(api.put("queues/jobs", {"visibility_timeout": "30"}), 400, "bad_request")
    assert not Queue.objects.exists()


def test_json_that_is_not_an_object_is_400(api):
    api.make_queue("jobs")
    assert_error(api.post("queues/jobs/messages", [1, 2]), 400)
    assert_error(api.post("queues/jobs/messages", "text"), 400)
    assert Message.objects.count() == 0


# --------------------------------------------------------------------- 401 --


def test_missing_token_is_401(db):
    response = Api("x.y")
    response.headers = {}
    r = response.get("queues")
    assert_error(r, 401, "unauthorized")
    assert r["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer nope", "Bearer mq0000000000000000.wrongsecret", "Basic dXNlcjpwYXNz", "Bearer ", "bearer"],
)
def test_bad_token_is_401(db, header):
    client = Client()
    r = client.get("/api/v1/queues", headers={"Authorization": header})
    r.data = __import__("json").loads(r.content)
    assert_error(r, 401, "unauthorized")


def test_right_key_id_with_wrong_secret_is_401(db):
    raw = make_token()
    key_id = raw.split(".")[0]
    assert_error(Api(f"{key_id}.not-the-secret").get("queues"), 401, "unauthorized")


def test_revoked_token_is_401(db):
    from django.utils import timezone

    from queues.api.auth import forget

    raw = make_token(name="gone")
    api = Api(raw)
    assert api.get("queues").status_code == 200
    Token.objects.filter(name="gone").update(revoked_at=timezone.now())
    forget()
    assert_error(api.get("queues"), 401, "unauthorized")


def test_every_endpoint_needs_a_token(api):
    api.make_queue("jobs")
    anon = Api("x.y")
    anon.headers = {}
    calls = [
        ("get", "queues/jobs", None),
        ("put", "queues/other", {}),
        ("delete", "queues/jobs", None),
        ("post", "queues/jobs/purge", None),
        ("post", "queues/jobs/redrive", {}),
        ("post", "queues/jobs/messages", {"body": 1}),
        ("post", "queues/jobs/receive", {}),
        ("post", "queues/jobs/ack", {"receipts": ["1." + "0" * 32]}),
        ("post", "queues/jobs/nack", {"receipts": ["1." + "0" * 32]}),
        ("post", "queues/jobs/extend", {"receipts": ["1." + "0" * 32], "visibility_timeout": 1}),
        ("get", "queues/jobs/messages", None),
        ("post", "consumers", {"name": "w"}),
        ("get", "consumers", None),
    ]
    for method, path, body in calls:
        kw = {"body": body} if method in ("post", "put") and body is not None else {}
        assert_error(getattr(anon, method)(path, **kw), 401, "unauthorized")
    assert Queue.objects.filter(name="jobs").exists() and not Queue.objects.filter(name="other").exists()


# --------------------------------------------------------------------- 403 --


def test_scope_is_enforced(api, token_factory):
    api.make_queue("jobs")
    producer = token_factory("produce")
    consumer = token_factory("consume")
    assert producer.post("queues/jobs/messages", {"body": 1}).status_code == 201
    assert_error(producer.post("queues/jobs/receive", {}), 403, "forbidden")
    assert_error(consumer.post("queues/jobs/messages", {"body": 1}), 403, "forbidden")
    assert len(consumer.receive("jobs")) == 1
    for client in (producer, consumer):
        assert_error(client.put("queues/new", {}), 403, "forbidden")
        assert_error(client.delete("queues/jobs"), 403, "forbidden")
        assert_error(client.post("queues/jobs/purge"), 403, "forbidden")
        assert_error(client.post("queues/jobs/redrive", {}), 403, "forbidden")
        assert_error(client.get("queues/jobs/messages"), 403, "forbidden")
    assert not Queue.objects.filter(name="new").exists()
    assert Message.objects.count() == 1


def test_queue_pattern_is_enforced(api, token_factory):
    api.make_queue("orders.eu")
    api.make_queue("billing")
    limited = token_factory("produce,consume,admin", "orders.*")
    assert limited.post("queues/orders.eu/messages", {"body": 1}).status_code == 201
    assert_error(limited.post("queues/billing/messages", {"body": 1}), 403, "forbidden")
    assert_error(limited.post("queues/billing/receive", {}), 403, "forbidden")
    assert_error(limited.get("queues/billing"), 403, "forbidden")
    assert_error(limited.put("queues/billing", {"paused": True}), 403, "forbidden")
    assert_error(limited.delete("queues/billing"), 403, "forbidden")
    assert limited.put("queues/orders.us").status_code == 201
    assert Queue.objects.get(name="billing").paused is False
    assert Message.objects.filter(queue__name="billing").count() == 0


def test_pattern_is_checked_before_existence(api, token_factory):
    """A token must not learn which queues outside its pattern exist."""
    limited = token_factory("produce", "orders.*")
    assert_error(limited.post("queues/secret/messages", {"body": 1}), 403, "forbidden")


# --------------------------------------------------------------------- 404 --


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "queues/nope", None),
        ("delete", "queues/nope", None),
        ("post", "queues/nope/purge", None),
        ("post", "queues/nope/redrive", {}),
        ("post", "queues/nope/messages", {"body": 1}),
        ("post", "queues/nope/receive", {}),
        ("post", "queues/nope/ack", {"receipts": ["1." + "0" * 32]}),
        ("post", "queues/nope/nack", {"receipts": ["1." + "0" * 32]}),
        ("post", "queues/nope/extend", {"receipts": ["1." + "0" * 32], "visibility_timeout": 1}),
        ("get", "queues/nope/messages", None),
    ],
)
def test_unknown_queue_is_404_queue_not_found(api, method, path, body):
    kw = {"body": body} if body is not None else {}
    assert_error(getattr(api, method)(path, **kw), 404, "queue_not_found")


def test_unknown_consumer_heartbeat_is_404(api):
    assert_error(api.post("consumers/nobody/heartbeat"), 404, "consumer_not_found")


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/api/v1/queues/a/b/c", "/api/v2/queues"])
def test_unknown_endpoint_is_404_json(api, path):
    error = assert_error(api.get(path), 404)
    assert error["code"] in ("not_found", "queue_not_found")


def test_wrong_method_is_json_too(api):
    api.make_queue("jobs")
    r = api.get("queues/jobs/receive")
    assert_error(r, 405)


# --------------------------------------------------------------------- 409 --


def test_deleting_a_dead_letter_queue_in_use_is_409(api):
    api.make_queue("dlq")
    api.make_queue("jobs", dead_letter_queue="dlq")
    assert_error(api.delete("queues/dlq"), 409, "queue_in_use")


# --------------------------------------------------------------------- 413 --


def test_body_over_the_queue_limit_is_413(api):
    api.make_queue("jobs", max_message_bytes=64)
    error = assert_error(api.post("queues/jobs/messages", {"body": "x" * 100}), 413, "message_too_large")
    assert "64" in error["message"]
    assert api.post("queues/jobs/messages", {"body": "x" * 60}).status_code == 201


def test_default_limit_is_256_kib(api):
    api.make_queue("jobs")
    assert_error(api.post("queues/jobs/messages", {"body": "x" * (256 * 1024)}), 413, "message_too_large")
    assert api.post("queues/jobs/messages", {"body": "x" * (256 * 1024 - 2)}).status_code == 201


def test_batch_with_one_oversized_message_enqueues_nothing(api):
    api.make_queue("jobs", max_message_bytes=64)
    batch = {"messages": [{"body": "ok"}, {"body": "x" * 100}, {"body": "ok"}]}
    assert_error(api.post("queues/jobs/messages", batch), 413, "message_too_large")
    assert Message.objects.count() == 0
    assert api.counts("jobs")["ready"] == 0


def test_request_over_the_server_limit_is_413(api):
    api.make_queue("jobs", max_message_bytes=16 * 1024 * 1024)
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=4096):
        r = api.post("queues/jobs/messages", {"body": "x" * 8000})
    assert_error(r, 413, "request_too_large")
    assert Message.objects.count() == 0


# --------------------------------------------------------------------- 422 --


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("queues/jobs/messages", {"body": 1, "priority": 10}),
        ("queues/jobs/messages", {"body": 1, "priority": -1}),
        ("queues/jobs/messages", {"body": 1, "delay": -5}),
        ("queues/jobs/messages", {"priority": 1}),
        ("queues/jobs/messages", {"body": 1, "unknown": 1}),
        ("queues/jobs/messages", {"messages": []}),
        ("queues/jobs/messages", {"messages": [{"body": i} for i in range(1001)]}),
        ("queues/jobs/messages", {"body": 1, "dedup_id": ""}),
        ("queues/jobs/messages", {"body": 1, "group": "g" * 129}),
        ("queues/jobs/receive", {"max": 0}),
        ("queues/jobs/receive", {"max": 101}),
        ("queues/jobs/receive", {"wait": 21}),
        ("queues/jobs/receive", {"wait": -1}),
        ("queues/jobs/receive", {"visibility_timeout": -1}),
        ("queues/jobs/ack", {"receipts": []}),
        ("queues/jobs/ack", {}),
        ("queues/jobs/ack", {"receipts": ["not-a-receipt"]}),
        ("queues/jobs/nack", {"receipts": ["1." + "0" * 32], "delay": -1}),
        ("queues/jobs/extend", {"receipts": ["1." + "0" * 32]}),
        ("queues/jobs/extend", {"receipts": ["1." + "0" * 32], "visibility_timeout": -1}),
    ],
)
def test_invalid_values_are_422(api, path, body):
    api.make_queue("jobs")
    api.send("jobs", "keep")
    assert_error(api.post(path, body), 422, "invalid_value")
    assert Message.objects.count() == 1
    assert api.counts("jobs")["ready"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"visibility_timeout": -1},
        {"max_deliveries": -1},
        {"delay": -1},
        {"max_message_bytes": 0},
        {"retention": 0},
        {"unknown_setting": 1},
        {"dead_letter_queue": "no such queue!"},
    ],
)
def test_invalid_queue_settings_are_422(api, body):
    assert_error(api.put("queues/jobs", body), 422, "invalid_value")
    assert not Queue.objects.exists()


@pytest.mark.parametrize("query", ["state=gone", "limit=0", "limit=abc", "after=-1", "after=x"])
def test_invalid_browse_query_is_an_error_not_a_500(api, query):
    api.make_queue("jobs")
    r = api.get(f"queues/jobs/messages?{query}")
    assert r.status_code in (400, 422)
    assert_error(r, r.status_code)


def test_batch_with_one_invalid_message_enqueues_nothing(api):
    api.make_queue("jobs")
    batch = {"messages": [{"body": 1}, {"body": 2, "priority": 99}, {"body": 3}]}
    error = assert_error(api.post("queues/jobs/messages", batch), 422, "invalid_value")
    assert "priority" in error["message"]
    assert Message.objects.count() == 0


def test_batch_with_one_wrongly_typed_message_enqueues_nothing(api):
    api.make_queue("jobs")
    batch = {"messages": [{"body": 1}, {"body": 2, "priority": "5"}]}
    assert_error(api.post("queues/jobs/messages", batch), 400, "bad_request")
    assert Message.objects.count() == 0


# --------------------------------------------------------------------- 429 --


def test_queue_at_max_depth_refuses_sends_with_429(api):
    api.make_queue("jobs")
    from queues import broker

    broker.put_queue("jobs", {"max_depth": 2})
    api.send("jobs", 1, 2)
    r = api.post("queues/jobs/messages", {"body": 3})
    assert_error(r, 429, "queue_full")
    assert r["Retry-After"]
    assert Message.objects.count() == 2
