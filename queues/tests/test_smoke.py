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
