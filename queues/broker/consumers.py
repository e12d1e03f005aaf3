"""Consumers: register, heartbeat, leave, and the release of a consumer's
leases when it leaves or is declared dead."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from ..backends import dialect
from ..exceptions import ConsumerDead, ConsumerNotFound, QueueNotFound
from ..models import GONE, Consumer, ConsumerStatus, Message, Queue
from ..states import MessageState as S
from .counters import count_by
from .receipts import Leased, release_rows


def heartbeat_interval(timeout: int) -> float:
    """How often a consumer should beat: three chances before it is dead."""
    return max(1.0, timeout / 3)


def register_consumer(name: str, queues: list[str], meta: dict[str, Any], heartbeat_timeout: int | None) -> Consumer:
    """Register a live consumer of ``queues`` (which must exist)."""
    known = set(Queue.objects.filter(name__in=queues).values_list("name", flat=True))
    missing = [q for q in queues if q not in known]
    if missing:
        raise QueueNotFound(f"No queue named {missing[0]!r}.")
    now = time.time()
    return Consumer.objects.create(
        name=name,
        queues=list(dict.fromkeys(queues)),
        meta=meta,
        heartbeat_timeout=heartbeat_timeout or settings.MQ_HEARTBEAT_TIMEOUT_SECONDS,
        registered_at=now,
        last_heartbeat=now,
    )


def get_consumer(consumer_id: str) -> Consumer:
    """The consumer with this id; raises ConsumerNotFound."""
    consumer = Consumer.objects.filter(pk=consumer_id).first()
    if consumer is None:
        raise ConsumerNotFound(f"No consumer with id {consumer_id!r}.")
    return consumer


def check_consumer(consumer_id: str) -> None:
    """Raises ConsumerNotFound for an unknown consumer, ConsumerDead for one
    declared dead or that left: what a receive naming it checks before it
    claims."""
    status = Consumer.objects.filter(pk=consumer_id).values_list("status", flat=True).first()
    if status is None:
        raise ConsumerNotFound(f"No consumer with id {consumer_id!r}; register first.")
    if status in GONE:
        raise ConsumerDead(_gone_message(status))


def heartbeat(consumer_id: str, *, now: float | None = None) -> Consumer:
    """Record a heartbeat. Raises ConsumerDead once the monitor declared the
    consumer dead, or it left: its leases were handed to others, it must
    register again."""
    consumer = get_consumer(consumer_id)
    if not consumer.beat(now):
        consumer.refresh_from_db(fields=["status"])
        raise ConsumerDead(_gone_message(consumer.status, consumer.name))
    return consumer


def _gone_message(status: str, name: str | None = None) -> str:
    who = "This consumer" if name is None else f"Consumer {name!r}"
    done = "left" if status == ConsumerStatus.LEFT else "was declared dead"
    return f"{who} {done}; register again."


def leave(consumer_id: str) -> int:
    """Graceful leave: the consumer is gone and its leases are released at
    once. Returns how many messages went back to ready."""
    with transaction.atomic():
        consumer = get_consumer(consumer_id)
        consumer.leave()
        return release_consumer(consumer.pk, reason=f"consumer {consumer.name} left")


def release_consumer(consumer_id: str, *, reason: str = "consumer left", now: float | None = None) -> int:
    """Return every message leased to a consumer to ready at once (a
    redelivery each). Returns how many."""
    now = time.time() if now is None else now
    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute(*dialect().leases_of_consumer(consumer_id))
            rows = [Leased._make(r) for r in cur.fetchall()]
        return release_rows(rows, now=now, reason=reason)


def consumer_in_flight(consumer_ids: Sequence[str]) -> dict[str, int]:
    """How many messages each of these consumers holds."""
    return dict(count_by(Message.objects.filter(state=S.IN_FLIGHT, consumer_id__in=list(consumer_ids)), "consumer_id"))
