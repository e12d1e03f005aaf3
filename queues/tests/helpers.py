"""Helpers for tests that call the broker directly with a controlled clock
(``now=``): make a queue, send, receive, and check that the live counts equal
the real ones."""

from __future__ import annotations

from collections import Counter
from typing import Any

from queues import broker
from queues.models import Message, Queue, QueueStats
from queues.states import MessageState as S

T0 = 1_900_000_000.0  # a fixed "now", well after any real clock in the test run


def make_queue(name: str = "q", **config: Any) -> Queue:
    if "dead_letter_queue" in config and isinstance(config["dead_letter_queue"], Queue):
        config["dead_letter_queue"] = config["dead_letter_queue"].name
    broker.put_queue(name, config)
    return broker.get_queue(name)


def send(queue: Queue, *bodies: Any, now: float = T0, **fields: Any) -> list[str]:
    import orjson

    results = broker.publish(queue, [broker.NewMessage(body=orjson.dumps(b), **fields) for b in bodies], now=now)
    return [r.id for r in results]


def receive(queue: Queue, n: int = 1, *, now: float = T0, **kw: Any) -> list[broker.Delivery]:
    return broker.receive(queue, max_messages=n, now=now, **kw)


def bodies(deliveries: list[broker.Delivery]) -> list[Any]:
    import orjson

    return [orjson.loads(d.body) for d in deliveries]


def real_counts(queue: Queue) -> dict[str, int]:
    """Counts by a full scan of the messages table: the truth to compare with."""
    by_state = Counter(Message.objects.filter(queue=queue).values_list("state", flat=True))
    return {
        "ready": by_state[S.READY],
        "delayed": by_state[S.DELAYED],
        "in_flight": by_state[S.IN_FLIGHT],
        "dead": by_state[S.DEAD] + Message.objects.filter(origin_queue=queue).count(),
    }


def live_counts(queue: Queue, now: float = T0) -> dict[str, int]:
    c = broker.queue_counts([queue.id], now=now)[queue.id]
    return {"ready": c.ready, "delayed": c.delayed, "in_flight": c.in_flight, "dead": c.dead}


def assert_counts_exact(*queues: Queue) -> None:
    """Live counts equal real counts before folding, after folding, and the
    folded row alone holds them once no delta is pending."""
    for q in queues:
        assert live_counts(q) == real_counts(q), q.name
    broker.fold_stats()
    for q in queues:
        assert live_counts(q) == real_counts(q), q.name
        stats = QueueStats.objects.get(queue=q)
        folded = {
            "ready": stats.ready,
            "delayed": stats.delayed,
            "in_flight": stats.in_flight,
            "dead": stats.dead_state + stats.dead_out,
        }
        assert folded == real_counts(q), q.name
