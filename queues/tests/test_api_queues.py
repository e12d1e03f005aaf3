"""Queues over the JSON API: create/update, names, list/get with live counts,
delete, purge, redrive (contract section 2, "Queues")."""

from __future__ import annotations

import time

import pytest

from queues import broker, monitor
from queues.models import Message, Queue

from . import helpers

COUNT_KEYS = ("ready", "delayed", "in_flight", "dead")


def real_counts(name: str) -> dict[str, int]:
    return helpers.real_counts(Queue.objects.get(name=name))


def api_counts(api, name: str) -> dict[str, int]:
    data = api.get(f"queues/{name}").data
    return {k: data[k] for k in COUNT_KEYS}


def kill(api, name: str, n: int) -> None:
    """Receive n messages and nack them past max_deliveries=1."""
    got = api.receive(name, max=n)
    assert len(got) == n
    r = api.post(f"queues/{name}/nack", {"receipts": [m["receipt"] for m in got]})
    assert r.status_code == 200, r.content


# ---------------------------------------------------------- create, update --


def test_put_creates_with_defaults_and_answers_201(api):
    r = api.put("queues/orders")
    assert r.status_code == 201
    q = r.data
    assert q["name"] == "orders"
    assert q["visibility_timeout"] == 30
    assert q["max_deliveries"] == 5
    assert q["delay"] == 0
    assert q["fifo"] is False and q["paused"] is False
    assert q["dead_letter_queue"] is None
    assert q["max_message_bytes"] == 256 * 1024
    assert {k: q[k] for k in COUNT_KEYS} == dict.fromkeys(COUNT_KEYS, 0)
    assert q["oldest_ready_age"] is None


def test_put_with_every_setting(api):
    api.make_queue("dead")
    body = {
        "visibility_timeout": 12,
        "max_deliveries": 0,
        "dead_letter_queue": "dead",
        "retention": 3600,
        "delay": 2,
        "fifo": True,
        "paused": True,
        "max_message_bytes": 1000,
    }
    r = api.put("queues/jobs", body)
    assert r.status_code == 201
    assert {k: r.data[k] for k in body} == body


def test_put_again_updates_only_the_given_settings_and_answers_200(api):
    api.make_queue("jobs", visibility_timeout=12, fifo=True)
    r = api.put("queues/jobs", {"max_deliveries": 9})
    assert r.status_code == 200
    assert r.data["max_deliveries"] == 9
    assert r.data["visibility_timeout"] == 12 and r.data["fifo"] is True
    assert Queue.objects.filter(name="jobs").count() == 1


def test_put_can_clear_the_dead_letter_queue(api):
    api.make_queue("dlq")
    api.make_queue("jobs", dead_letter_queue="dlq")
    r = api.put("queues/jobs", {"dead_letter_queue": None})
    assert r.status_code == 200 and r.data["dead_letter_queue"] is None


@pytest.mark.parametrize("name", ["a", "A-Z_0.9", "x" * 80, "orders.v2", "-", "..."])
def test_valid_queue_names(api, name):
    assert api.put(f"queues/{name}").status_code == 201
    assert api.get(f"queues/{name}").data["name"] == name


@pytest.mark.parametrize("name", ["x" * 81, "has space", "ümlaut", "semi;colon", "star*"])
def test_invalid_queue_names_are_refused(api, name):
    from urllib.parse import quote

    r = api.put(f"queues/{quote(name)}")
    assert r.status_code in (404, 422), r.content
    assert r.data["error"]["code"] in ("invalid_value", "not_found")
    assert not Queue.objects.exists()


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_and_dot_dot_are_not_queue_names(api, name):
    # Clients resolve "/queues/." away; escaped, it reaches us, and a queue
    # so named could never be opened in the dashboard: refused as a 422.
    r = api.put("queues/" + name.replace(".", "%2E"))
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value", r.content
    assert "not . or .." in r.data["error"]["message"]
    assert not Queue.objects.exists()


@pytest.mark.parametrize("name", [".", "..", "x\n"])
def test_a_dead_letter_queue_or_a_consumer_queue_must_be_a_queue_name(api, name):
    r = api.put("queues/jobs", {"dead_letter_queue": name})
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value", r.content
    assert r.data["error"]["message"].startswith("dead_letter_queue: ")
    r = api.post("consumers", {"name": "w", "queues": [name]})
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value", r.content
    assert not Queue.objects.exists()


def test_name_of_81_characters_is_an_invalid_value(api):
    r = api.put("queues/" + "x" * 81)
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value"


def test_unknown_dead_letter_queue_is_refused(api):
    r = api.put("queues/jobs", {"dead_letter_queue": "nope"})
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value"
    assert not Queue.objects.exists()


def test_own_dead_letter_queue_is_refused(api):
    api.make_queue("jobs")
    r = api.put("queues/jobs", {"dead_letter_queue": "jobs"})
    assert r.status_code == 422
    assert r.data["error"]["message"].startswith("dead-letter cycle: jobs → jobs")


def test_dead_letter_cycle_is_refused_naming_it(api):
    api.make_queue("c")
    api.make_queue("b", dead_letter_queue="c")
    api.make_queue("a", dead_letter_queue="b")
    r = api.put("queues/b", {"dead_letter_queue": "a"})  # b -> a -> b
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value"
    assert r.data["error"]["message"] == "dead-letter cycle: b → a → b"
    r = api.put("queues/c", {"dead_letter_queue": "a"})  # c -> a -> b -> c
    assert r.status_code == 422
    assert r.data["error"]["message"] == "dead-letter cycle: c → a → b → c"
    assert Queue.objects.get(name="c").dead_letter_queue is None
    assert api.put("queues/c", {"dead_letter_queue": None, "visibility_timeout": 7}).status_code == 200


# -------------------------------------------------------------- list, get --


def test_list_returns_every_queue_by_name_with_counts(api):
    api.make_queue("b")
    api.make_queue("a")
    api.send("a", 1, 2)
    r = api.get("queues")
    assert r.status_code == 200
    assert [q["name"] for q in r.data["queues"]] == ["a", "b"]
    a = r.data["queues"][0]
    assert a["ready"] == 2 and a["in_flight"] == 0
    assert isinstance(a["oldest_ready_age"], float)


def test_list_shows_only_queues_the_token_pattern_matches(api, token_factory):
    for name in ("orders.eu", "orders.us", "billing"):
        api.make_queue(name)
    limited = token_factory("produce,consume", "orders.*")
    assert [q["name"] for q in limited.get("queues").data["queues"]] == ["orders.eu", "orders.us"]


def test_get_unknown_queue_is_404(api):
    r = api.get("queues/nope")
    assert r.status_code == 404 and r.data["error"]["code"] == "queue_not_found"


def test_counts_by_state_match_real_counts_before_and_after_folding(api):
    api.make_queue("dlq")
    api.make_queue("jobs", max_deliveries=1, dead_letter_queue="dlq")
    api.make_queue("solo", max_deliveries=1)
    api.send("jobs", *range(10))
    api.send("jobs", "later", delay=300)
    api.send("solo", *range(3))
    got = api.receive("jobs", max=4)
    api.ack("jobs", got[0]["receipt"])
    api.post("queues/jobs/nack", {"receipts": [got[1]["receipt"]]})  # -> dlq
    kill(api, "solo", 2)  # -> dead in place
    expected = {
        "jobs": {"ready": 6, "delayed": 1, "in_flight": 2, "dead": 1},
        "dlq": {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0},
        "solo": {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 2},
    }
    for name, counts in expected.items():
        assert api_counts(api, name) == counts == real_counts(name)
    broker.fold_stats()
    for name, counts in expected.items():
        assert api_counts(api, name) == counts == real_counts(name)
    listed = {q["name"]: {k: q[k] for k in COUNT_KEYS} for q in api.get("queues").data["queues"]}
    assert listed == expected


def test_counts_follow_expiry_by_the_monitor(api):
    api.make_queue("jobs")
    api.send("jobs", "x")
    api.receive("jobs", visibility_timeout=1)
    assert api_counts(api, "jobs")["in_flight"] == 1
    monitor.tick(now=time.time() + 2)
    broker.fold_stats()
    assert api_counts(api, "jobs") == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0} == real_counts("jobs")


def test_oldest_ready_age_grows_with_the_oldest_ready_message(api):
    api.make_queue("jobs")
    (mid,) = api.send("jobs", "x")
    Message.objects.filter(pk=mid).update(enqueued_at=time.time() - 60)
    age = api.get("queues/jobs").data["oldest_ready_age"]
    assert 59 <= age <= 120


# ------------------------------------------------------------------ delete --


def test_oldest_ready_age_is_documented_in_seconds(api):
    schemas = api.get("openapi.json").data["components"]["schemas"]
    (queue,) = [s for s in schemas.values() if "oldest_ready_age" in s.get("properties", {})]
    assert queue["properties"]["oldest_ready_age"]["description"].startswith("Seconds since")


def test_delete_removes_queue_and_messages(api):
    api.make_queue("jobs")
    api.send("jobs", 1, 2, 3)
    r = api.delete("queues/jobs")
    assert r.status_code == 204
    assert api.get("queues/jobs").status_code == 404
    assert Message.objects.count() == 0


def test_delete_unknown_queue_is_404(api):
    r = api.delete("queues/nope")
    assert r.status_code == 404 and r.data["error"]["code"] == "queue_not_found"


def test_delete_of_another_queues_dead_letter_queue_is_409(api):
    api.make_queue("dlq")
    api.make_queue("jobs", dead_letter_queue="dlq")
    r = api.delete("queues/dlq")
    assert r.status_code == 409
    assert r.data["error"]["code"] == "queue_in_use"
    assert "jobs" in r.data["error"]["message"]
    assert api.get("queues/dlq").status_code == 200
    api.put("queues/jobs", {"dead_letter_queue": None})
    assert api.delete("queues/dlq").status_code == 204


# ------------------------------------------------------------------- purge --


def test_purge_deletes_everything_and_makes_receipts_stale(api):
    api.make_queue("jobs")
    api.send("jobs", *range(5))
    api.send("jobs", "later", delay=60)
    (held,) = api.receive("jobs")
    r = api.post("queues/jobs/purge")
    assert r.status_code == 200 and r.data == {"purged": 6}
    assert api_counts(api, "jobs") == dict.fromkeys(COUNT_KEYS, 0)
    assert api.ack("jobs", held["receipt"]) == {"acked": [], "stale": [held["receipt"]]}
    assert api.receive("jobs") == []


def test_purge_unknown_queue_is_404(api):
    assert api.post("queues/nope/purge").status_code == 404


# ----------------------------------------------------------------- redrive --


def test_redrive_dead_messages_in_place(api):
    api.make_queue("jobs", max_deliveries=1)
    api.send("jobs", "a", "b", "c")
    kill(api, "jobs", 3)
    assert api_counts(api, "jobs")["dead"] == 3
    r = api.post("queues/jobs/redrive", {"max": 2})
    assert r.status_code == 200 and r.data == {"moved": 2}
    assert api_counts(api, "jobs") == {"ready": 2, "delayed": 0, "in_flight": 0, "dead": 1}
    # No body at all: the body is optional.
    assert api.post("queues/jobs/redrive", raw="").data == {"moved": 1}
    got = api.receive("jobs", max=10)
    assert sorted(m["body"] for m in got) == ["a", "b", "c"]
    assert all(m["delivery_count"] == 1 for m in got)


def test_redrive_from_dlq_back_to_origin(api):
    api.make_queue("dlq")
    api.make_queue("jobs", max_deliveries=1, dead_letter_queue="dlq")
    api.send("jobs", "a", "b", "c")
    kill(api, "jobs", 3)
    assert api_counts(api, "dlq")["ready"] == 3
    assert api_counts(api, "jobs")["dead"] == 3
    assert api.post("queues/dlq/redrive", {"max": 1}).data == {"moved": 1}
    assert api_counts(api, "jobs") == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 2} == real_counts("jobs")
    assert api_counts(api, "dlq")["ready"] == 2
    assert api.post("queues/dlq/redrive", {}).data == {"moved": 2}
    assert api_counts(api, "dlq") == dict.fromkeys(COUNT_KEYS, 0)
    assert sorted(m["body"] for m in api.receive("jobs", max=10)) == ["a", "b", "c"]


def test_redrive_max_must_be_positive(api):
    api.make_queue("jobs")
    r = api.post("queues/jobs/redrive", {"max": 0})
    assert r.status_code == 422 and r.data["error"]["code"] == "invalid_value"
