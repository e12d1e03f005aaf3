"""The monitor's consumer-health pass: alive -> suspect -> dead, and crash
recovery.

A consumer beats every ``heartbeat_interval`` (a third of its timeout). One
missed beat makes it *suspect* (it keeps its leases: it may only be slow);
silence past its ``heartbeat_timeout`` makes it *dead*, and every message it
held goes back to ready at once, as redeliveries, long before their
visibility timeouts would have returned them.
"""

from __future__ import annotations

import logging
import time

from django.db import transaction
from django.db.models import F, FloatField, Q, Value
from django.db.models.functions import Greatest

from . import broker, events
from .models import GONE, Consumer, ConsumerStatus, Message
from .states import MessageState

log = logging.getLogger(__name__)

# A beat may arrive this much later than its interval before the consumer
# counts as having missed it (network and scheduling jitter).
SUSPECT_GRACE = 0.5  # fraction of one heartbeat interval
# A receive that checked its consumer just before the consumer was declared
# dead (or left) may commit its claim just after the release; consumers gone
# this recently are swept again for such stragglers.
STRAGGLER_WINDOW_SECONDS = 60.0
# Consumers that died or left stay in the admin this long (the live lists
# hide them sooner: MQ_CONSUMER_FORGET_SECONDS).
DEAD_CONSUMER_KEEP_SECONDS = 24 * 3600.0


def _recently_gone(now: float) -> Q:
    return Q(status__in=GONE, dead_at__gte=now - STRAGGLER_WINDOW_SECONDS)


def _forgotten(now: float) -> Q:
    return Q(status__in=GONE, dead_at__lt=now - DEAD_CONSUMER_KEEP_SECONDS)


def check_consumers(now: float | None = None) -> dict[str, int]:
    """One health pass (the monitor's tick hook). Returns how many consumers
    turned suspect and dead and how many messages went back to ready."""
    now = time.time() if now is None else now
    if not _anything_due(now):
        return {"suspect": 0, "dead": 0, "released": 0}
    done = {"suspect": _mark_suspects(now), "dead": 0, "released": 0}
    for consumer in Consumer.objects.filter(Consumer.silent(now)):
        released = declare_dead(consumer, now=now)
        if released is not None:
            done["dead"] += 1
            done["released"] += released
    done["released"] += _release_stragglers(now)
    Consumer.objects.filter(_forgotten(now)).delete()
    return done


def _anything_due(now: float) -> bool:
    """One query, the whole pass when it answers yes: is a consumer late
    enough to turn suspect or dead, dead recently enough to be swept for
    stragglers, or dead long enough to forget? The pass itself runs four
    or more queries, four times a second; with healthy consumers (or none)
    there is nothing for them to find."""
    interval = Greatest(Value(1.0), F("heartbeat_timeout") / Value(3.0), output_field=FloatField())
    return Consumer.objects.filter(
        Q(status=ConsumerStatus.ALIVE, last_heartbeat__lt=Value(now) - interval * Value(1 + SUSPECT_GRACE))
        | Consumer.silent(now)
        | _recently_gone(now)
        | _forgotten(now)
    ).exists()


def _mark_suspects(now: float) -> int:
    marked = 0
    for consumer in Consumer.objects.filter(status=ConsumerStatus.ALIVE, last_heartbeat__lt=now - 1).only(
        "id", "status", "last_heartbeat", "heartbeat_timeout"
    ):
        cutoff = now - broker.heartbeat_interval(consumer.heartbeat_timeout) * (1 + SUSPECT_GRACE)
        if consumer.last_heartbeat < cutoff and consumer.mark_suspect():
            marked += 1
    return marked


def declare_dead(consumer: Consumer, *, now: float) -> int | None:
    """Declare a silent consumer dead and release its messages, in one
    transaction. Returns how many were released, or None when a heartbeat
    won the race (the consumer lives)."""
    silent = now - consumer.last_heartbeat
    with transaction.atomic():
        if not consumer.declare_dead(now):
            return None
        released = broker.release_consumer(
            consumer.pk, reason=f"consumer {consumer.name} silent for {silent:.1f} s (declared dead)", now=now
        )
        events.emit(
            "consumer_dead",
            None,
            consumer=consumer.pk,
            name=consumer.name,
            queues=consumer.queues,
            silent_seconds=round(silent, 1),
            released=released,
        )
    log.warning(
        "consumer %s declared dead after %.1f s of silence; %d messages back to ready", consumer, silent, released
    )
    return released


def _release_stragglers(now: float) -> int:
    recent = list(Consumer.objects.filter(_recently_gone(now)).values_list("id", flat=True))
    if not recent:
        return 0
    holding = set(
        Message.objects.filter(state=MessageState.IN_FLIGHT, consumer_id__in=recent).values_list(
            "consumer_id", flat=True
        )
    )
    return sum(broker.release_consumer(cid, reason="consumer was declared dead or left", now=now) for cid in holding)
