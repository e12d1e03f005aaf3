from __future__ import annotations


def test_send_receive_ack_round_trip(api):
    api.make_queue("jobs")
    ids = api.send("jobs", {"a": 1}, "two")
    got = api.receive("jobs", max=10)
    assert [m["id"] for m in got] == ids
    assert got[0]["body"] == {"a": 1}
    result = api.ack("jobs", *[m["receipt"] for m in got])
    assert sorted(result["acked"]) == sorted(ids)
    assert api.counts("jobs")["ready"] == 0


def test_every_json_answer_ends_with_a_newline(api, client):
    """So that curl's output ends its line and the shell prompt starts on the next."""
    api.make_queue("jobs")
    answers = [
        api.put("queues/jobs", {"delay": 0}),  # 200
        api.post("queues/jobs/messages", {"body": 1}),  # 201
        api.post("queues/jobs/receive", {"max": 1}),  # the async view
        api.get("queues"),
        api.post("consumers", {"name": "c"}),
        api.get("queues/nope"),  # 404 from the broker
        api.post("queues/jobs/messages", {"body": 1, "priority": 10}),  # 422 from validation
        api.post("queues/jobs/messages", raw="{not json"),  # 400
        api.delete("queues/jobs/messages"),  # 405 from the router, shaped by the middleware
        api.get("nowhere"),  # 404 from Django, shaped too
        client.get("/api/v1/queues"),  # 401
        client.get("/healthz"),
    ]
    for r in answers:
        assert r["Content-Type"].startswith("application/json"), r
        assert r.content.endswith(b"}\n") and not r.content.endswith(b"\n\n"), (r.status_code, r.content[-40:])
