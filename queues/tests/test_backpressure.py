"""A queue with max_depth pushes back (429 + retry_after) instead of growing."""

from __future__ import annotations


def test_send_past_max_depth_is_refused_with_retry_after(api):
    api.make_queue("bounded", max_depth=3)
    api.send("bounded", 1, 2)
    refused = api.post("queues/bounded/messages", {"messages": [{"body": 3}, {"body": 4}]})
    assert refused.status_code == 429
    assert refused.data["error"]["code"] == "queue_full"
    assert refused.data["error"]["retry_after"] >= 1
    assert int(refused["Retry-After"]) >= 1
    assert api.counts("bounded")["ready"] == 2  # the refused batch left nothing behind
    api.send("bounded", 3)  # one more still fits


def test_acking_makes_room_again(api):
    api.make_queue("bounded", max_depth=1)
    api.send("bounded", "a")
    assert api.post("queues/bounded/messages", {"body": "b"}).status_code == 429
    [m] = api.receive("bounded")
    assert api.post("queues/bounded/messages", {"body": "b"}).status_code == 429  # in flight still counts
    api.ack("bounded", m["receipt"])
    assert api.post("queues/bounded/messages", {"body": "b"}).status_code == 201


def test_refusal_says_by_how_much_the_batch_would_exceed_the_limit(api):
    api.make_queue("q", max_depth=1)
    refused = api.post("queues/q/messages", {"messages": [{"body": 1}, {"body": 2}]})
    assert refused.status_code == 429
    assert refused.data["error"]["message"] == (
        "Queue 'q' holds 0 of at most 1 messages; this batch of 2 would exceed it by 1."
    )
    api.send("q", 1)
    refused = api.post("queues/q/messages", {"body": 2})
    assert refused.data["error"]["message"] == "Queue 'q' holds 1 of at most 1 messages; this message would exceed it by 1."
