"""Who may call what: every endpoint against every scope, queue patterns,
bad tokens, and the brake on guessing."""

from __future__ import annotations

import pytest

from conftest import Api, make_token
from queues import broker
from queues.api import auth

RECEIPT = "1." + "0" * 32

# (method, path, body, scope that allows it; None = any valid token)
ENDPOINTS = [
    ("get", "queues", None, None),
    ("get", "queues/work", None, None),
    ("put", "queues/work", {}, "admin"),
    ("delete", "queues/work", None, "admin"),
    ("post", "queues/work/purge", None, "admin"),
    ("post", "queues/work/redrive", None, "admin"),
    ("get", "queues/work/messages?state=ready", None, "admin"),
    ("post", "queues/work/messages", {"body": 1}, "produce"),
    ("post", "queues/work/receive", {}, "consume"),
    ("post", "queues/work/ack", {"receipts": [RECEIPT]}, "consume"),
    ("post", "queues/work/nack", {"receipts": [RECEIPT]}, "consume"),
    ("post", "queues/work/extend", {"receipts": [RECEIPT], "visibility_timeout": 5}, "consume"),
    ("post", "consumers", {"name": "c", "queues": ["work"]}, "consume"),
    ("get", "consumers", None, "consume"),
]


def call(client: Api, method: str, path: str, body: object) -> int:
    response = getattr(client, method)(path, body) if method in ("post", "put") else getattr(client, method)(path)
    return response.status_code


@pytest.fixture
def work_queue(db):  # type: ignore[no-untyped-def]
    auth.forget()
    broker.put_queue("work", {})


@pytest.mark.parametrize("scope", ["produce", "consume", "admin"])
@pytest.mark.parametrize(("method", "path", "body", "needed"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_every_endpoint_enforces_its_scope(work_queue, scope, method, path, body, needed):
    client = Api(make_token(scope))
    status = call(client, method, path, body)
    allowed = needed is None or scope == needed or scope == "admin"
    if allowed:
        assert status not in (401, 403), (scope, method, path, status)
    else:
        assert status == 403, (scope, method, path, status)


@pytest.mark.parametrize(("method", "path", "body", "needed"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_every_endpoint_refuses_a_bad_token(work_queue, method, path, body, needed):
    for header in ("", "Bearer nope", "Bearer mq0000.wrong-secret", "Basic dXNlcjpwYXNz"):
        auth.forget()
        client = Api("x")
        client.headers = {"Authorization": header} if header else {}
        response = getattr(client, method)(path, body) if method in ("post", "put") else getattr(client, method)(path)
        assert response.status_code == 401, (header, method, path)
        assert response.data["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body", "needed"), ENDPOINTS[1:12], ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS[1:12]])
def test_queue_pattern_limits_a_token_to_its_queues(work_queue, method, path, body, needed):
    client = Api(make_token("produce,consume,admin", "orders.*"))
    assert call(client, method, path, body) == 403


def test_queue_pattern_filters_the_queue_list(work_queue):
    broker.put_queue("orders.eu", {})
    client = Api(make_token("consume", "orders.*"))
    names = [q["name"] for q in client.get("queues").data["queues"]]
    assert names == ["orders.eu"]


def test_revoked_token_is_refused(work_queue):
    from django.core.management import call_command

    raw = make_token("admin")
    client = Api(raw)
    assert client.get("queues").status_code == 200
    from queues.models import Token

    name = Token.objects.get(key_id=raw.split(".")[0]).name
    call_command("mq", "token", "revoke", name)
    assert client.get("queues").status_code == 401


def test_tokens_are_stored_hashed(work_queue):
    from queues.models import Token

    raw = make_token("admin")
    key_id, secret = raw.split(".", 1)
    token = Token.objects.get(key_id=key_id)
    assert secret not in token.secret_hash
    assert token.check_secret(secret) and not token.check_secret(secret + "x")


def test_repeated_failed_auth_is_slowed_down(work_queue):
    client = Api("mq0000.guess")
    statuses = [client.get("queues").status_code for _ in range(auth.AUTH_FAILURES_ALLOWED + 1)]
    assert statuses[:-1] == [401] * auth.AUTH_FAILURES_ALLOWED
    assert statuses[-1] == 429
    last = client.get("queues")
    assert last.data["error"]["code"] == "too_many_failed_auth"
    assert int(last["Retry-After"]) >= 1


def fail_until_braked(client: Api) -> None:
    for _ in range(auth.AUTH_FAILURES_ALLOWED):
        assert client.get("queues").status_code == 401
    assert client.get("queues").status_code == 429


def test_a_valid_token_from_a_braked_address_is_accepted(work_queue):
    fail_until_braked(Api("mq0000.guess"))
    raw = make_token("admin")
    assert Api(raw).get("queues").status_code == 200  # verified against the database
    assert Api(raw).get("queues").status_code == 200  # and lately verified (cached)
    assert Api("mq0000.guess").get("queues").status_code == 429


def test_a_braked_key_id_is_braked_from_another_address_with_a_wrong_secret_only(work_queue):
    raw = make_token("admin")
    key_id = raw.split(".")[0]
    guesser = Api(f"{key_id}.wrong-secret")
    fail_until_braked(guesser)
    elsewhere = Api(f"{key_id}.another-wrong-secret")
    elsewhere.client.defaults["REMOTE_ADDR"] = "10.1.2.3"
    refused = elsewhere.get("queues")
    assert refused.status_code == 429
    assert key_id in refused.data["error"]["message"]
    # The key id's owner is not locked out, from either address.
    owner = Api(raw)
    assert owner.get("queues").status_code == 200
    owner.client.defaults["REMOTE_ADDR"] = "10.1.2.3"
    assert owner.get("queues").status_code == 200
    # Another key id from that other address only fails as usual.
    other = Api("mq1111.guess")
    other.client.defaults["REMOTE_ADDR"] = "10.1.2.3"
    assert other.get("queues").status_code == 401



def test_a_403_says_the_token_lacks_the_scope_by_its_name(work_queue):
    response = Api(make_token("produce")).post("queues/work/receive", {})
    assert response.status_code == 403
    assert response.data["error"]["message"] == "This token lacks the consume scope."


@pytest.mark.parametrize(("method", "path", "body"), [("post", "queues/work/receive", {}), ("get", "queues/work", None), ("put", "queues/work", {})])
def test_a_403_says_when_the_queue_pattern_refuses(work_queue, method, path, body):
    client = Api(make_token("consume", "orders-*"))
    response = client.put(path, body) if method == "put" else client.post(path, body) if method == "post" else client.get(path)
    assert response.status_code == 403
    assert response.data["error"]["message"] == "This token may not use queue 'work' (its queues: 'orders-*')."
