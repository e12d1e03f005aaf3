"""The client's streams (websockets) against a real ``mq serve``: consume
streams draining a queue together, and the publisher's batches in flight."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from mqclient import Client, MQError

from conftest import make_token
from queues import broker
from queues.models import Message
from queues.tests.live import live_server


def make_queue(name: str, **config: Any) -> None:
    broker.put_queue(name, dict(config))


def send(name: str, *bodies: Any) -> None:
    queue = broker.get_queue(name)
    broker.publish(queue, [broker.NewMessage(body=json.dumps(b).encode()) for b in bodies])


def test_mqclient_streams_drain_a_real_server_together_each_message_acked_once(transactional_db):
    """Three streams of the Python client, each acking one message at a
    time, drain a real server; one of them quits half-way holding messages.
    Every message is acked exactly once, none is left, none lost."""
    total = 900
    # Leases outlast the test: what the quitter held comes back only because
    # its stream closed.
    make_queue("work", visibility_timeout=300)
    for start in range(0, total, 300):
        send("work", *range(start, start + 300))
    token = make_token("consume")
    acked: list[str] = []
    lock = threading.Lock()
    with live_server() as url:
        client = Client(url, token)

        def drain(quit_after: int | None) -> None:
            with client.consume("work", prefetch=10) as stream:
                n = 0
                while len(acked) < total:
                    for message in stream.receive(timeout=0.5):
                        n += 1
                        if quit_after is not None and n > quit_after:
                            return  # closes holding up to 10 unacked: they go to the others
                        stream.ack([message.receipt])
                        with lock:
                            acked.append(message.id)

        threads = [threading.Thread(target=drain, args=(q,)) for q in (None, None, 100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert len(acked) == len(set(acked)) == total
    assert not Message.objects.filter(queue__name="work").exists()


def test_mqclient_publisher_against_a_real_server(transactional_db):
    """The Python client's publisher: batches in flight, answered in order,
    a refused batch reported as its own, dedup as over HTTP."""
    make_queue("made")
    with live_server() as url:
        client = Client(url, make_token("produce"))
        # A refused stream raises when it is opened, with the contract's error.
        with pytest.raises(MQError) as refused:
            client.publisher("nope")
        assert (refused.value.status, refused.value.code) == (404, "queue_not_found")
        with pytest.raises(MQError) as forbidden:
            client.consume("made")
        assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
        with client.publisher("made", window=3) as pub:
            numbers = [pub.send_batch([{"body": {"n": n, "i": i}} for i in range(50)]) for n in range(10)]
            bad = pub.send_batch([{"body": "fine"}, {"body": "too urgent", "priority": 99}])
            first = pub.send("once", dedup_id="order-1")
            again = pub.send("twice", dedup_id="order-1")
            answers = pub.flush()
        assert [a.batch for a in answers] == [*numbers, bad, first, again]
        assert all(a.messages is not None and len(a.messages) == 50 for a in answers[:10])
        refused = answers[10]
        assert refused.messages is None and isinstance(refused.error, MQError) and refused.error.status == 422
        assert answers[11].messages is not None and answers[12].messages is not None
        assert answers[12].messages[0] == {"id": answers[11].messages[0]["id"], "duplicate": True}
    assert Message.objects.filter(queue__name="made").count() == 501
