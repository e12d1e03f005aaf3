"""The client's HTTP calls against a live `mq serve` on the test database:
send, receive, ack, nack, extend, acks riding on a receive, and the
server's errors raised as the client's."""

from __future__ import annotations

import pytest
from mqclient import Client, ConsumerDead, MQError


def test_client_sends_receives_acks_nacks_and_extends(client):
    client.put_queue("jobs", visibility_timeout=30)
    first = client.send("jobs", {"n": 1}, priority=3, headers={"k": "v"})
    batch = client.send_batch("jobs", [{"body": 2}, {"body": 3, "dedup_id": "x"}, {"body": 4, "dedup_id": "x"}])
    assert [m["duplicate"] for m in batch] == [False, False, True]
    got = client.receive("jobs", max=10)
    assert [m.body for m in got] == [{"n": 1}, 2, 3]
    assert got[0].id == first and got[0].headers == {"k": "v"} and got[0].priority == 3
    assert client.extend("jobs", [got[0].receipt], 60)["extended"] == [first]
    assert client.nack("jobs", [got[1].receipt], reason="try later")["nacked"] == [got[1].id]
    assert sorted(client.ack("jobs", [got[0].receipt, got[2].receipt])["acked"]) == sorted([first, got[2].id])
    again = client.receive("jobs", wait=1)
    assert again[0].id == got[1].id and again[0].delivery_count == 2


def test_client_acks_and_receives_in_one_call(client):
    client.put_queue("batches")
    client.send_batch("batches", [{"body": i} for i in range(5)])
    acked, first = client.ack_and_receive("batches", [], max=3)
    assert acked == {"acked": [], "stale": []} and [m.body for m in first] == [0, 1, 2]
    acked, rest = client.ack_and_receive("batches", [m.receipt for m in first], max=3, wait=1)
    assert sorted(acked["acked"]) == sorted(m.id for m in first) and acked["stale"] == []
    assert [m.body for m in rest] == [3, 4]
    acked, none = client.ack_and_receive("batches", [m.receipt for m in rest] + [first[0].receipt])
    assert acked["stale"] == [first[0].receipt] and none == []
    assert client.get_queue("batches")["in_flight"] == 0


def test_client_raises_the_servers_errors(client, server):
    with pytest.raises(MQError) as missing:
        client.receive("nope")
    assert (missing.value.status, missing.value.code) == (404, "queue_not_found")
    with pytest.raises(MQError) as unauthorized:
        Client(server, "mqnobody.secret").receive("nope")
    assert unauthorized.value.status == 401
    client.put_queue("jobs")
    reg = client.register("w", ["jobs"], heartbeat_timeout=5)
    assert client.heartbeat(reg.id)["status"] == "alive"
    client.leave(reg.id)
    with pytest.raises(ConsumerDead):
        client.heartbeat(reg.id)
