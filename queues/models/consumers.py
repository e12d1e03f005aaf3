"""Consumers: who receives, and whether they are alive.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypedDict

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from .queues import epoch_to_iso


class ConsumerStatus(models.TextChoices):
    ALIVE = "alive", "Alive"
    #: Missed a heartbeat interval; still holds its leases.
    SUSPECT = "suspect", "Suspect"
    #: Missed heartbeats past its timeout: the monitor declared it dead and
    #: released its leases.
    DEAD = "dead", "Dead"
    #: Left gracefully (``DELETE /consumers/{id}``); its leases were released.
    #: Not a crash, but gone all the same: it beats and receives no more.
    LEFT = "left", "Left"


#: The statuses of a consumer that is gone: it holds nothing, its heartbeats
#: answer 410 and its receives are refused; it must register again.
GONE = (ConsumerStatus.DEAD, ConsumerStatus.LEFT)


def _consumer_id() -> str:
    return uuid.uuid4().hex


class ConsumerDict(TypedDict):
    id: str
    name: str
    queues: list[str]
    status: str
    last_heartbeat: str | None
    heartbeat_timeout: int
    dead_at: str | None
    in_flight: int
    meta: dict[str, Any]


class ConsumerQuerySet(models.QuerySet["Consumer"]):
    def live(self) -> ConsumerQuerySet:
        """Alive or suspect: the consumers that may hold leases."""
        return self.exclude(status__in=GONE)

    def listed(self, now: float | None = None) -> ConsumerQuerySet:
        """What the live lists show (the dashboard, ``GET /consumers``):
        live consumers, and those gone less than ``MQ_CONSUMER_FORGET_SECONDS``
        ago. The admin lists them all."""
        now = time.time() if now is None else now
        return self.filter(~Q(status__in=GONE) | Q(dead_at__gte=now - settings.MQ_CONSUMER_FORGET_SECONDS))


class Consumer(models.Model):
    """A registered consumer. Its status changes one row at a time, each a
    conditional update that settles a race (``beat``, ``mark_suspect``,
    ``declare_dead``, ``leave``); releasing what it held is the broker's."""

    id = models.CharField(primary_key=True, max_length=40, default=_consumer_id, editable=False)
    name = models.CharField(max_length=200)
    queues = models.JSONField(default=list, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=ConsumerStatus.choices, default=ConsumerStatus.ALIVE
    )
    heartbeat_timeout = models.PositiveIntegerField(default=15)
    registered_at = models.FloatField(default=time.time)
    last_heartbeat = models.FloatField(default=time.time)
    dead_at = models.FloatField(null=True, blank=True)

    objects = ConsumerQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["status", "last_heartbeat"], name="mq_consumer_health")]

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:8]})"

    def to_dict(self, in_flight: int) -> ConsumerDict:
        """The consumer and how many messages it holds, as the API answers
        and the dashboard shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "queues": list(self.queues),
            "status": self.status,
            "last_heartbeat": epoch_to_iso(self.last_heartbeat),
            "heartbeat_timeout": self.heartbeat_timeout,
            "dead_at": epoch_to_iso(self.dead_at),
            "in_flight": in_flight,
            "meta": self.meta,
        }

    @staticmethod
    def silent(now: float) -> Q:
        """Alive or suspect consumers silent past their heartbeat timeout."""
        return Q(status__in=[ConsumerStatus.ALIVE, ConsumerStatus.SUSPECT], last_heartbeat__lt=now - F("heartbeat_timeout"))

    def beat(self, now: float | None = None) -> bool:
        """A heartbeat: alive again. False, and nothing changes, once the
        consumer was declared dead or left: its leases went to others and it
        must register again."""
        now = time.time() if now is None else now
        # Conditional: a beat racing the monitor's death sentence either
        # lands first (and the consumer lives) or finds it dead, never both.
        if not Consumer.objects.filter(pk=self.pk).exclude(status__in=GONE).update(
            last_heartbeat=now, status=ConsumerStatus.ALIVE
        ):
            return False
        self.last_heartbeat, self.status = now, ConsumerStatus.ALIVE
        return True

    def mark_suspect(self) -> bool:
        """Alive -> suspect: it missed a beat, and keeps its leases (it may
        only be slow). False when a beat landed since this instance was read."""
        if not Consumer.objects.filter(
            pk=self.pk, status=ConsumerStatus.ALIVE, last_heartbeat=self.last_heartbeat
        ).update(status=ConsumerStatus.SUSPECT):
            return False
        self.status = ConsumerStatus.SUSPECT
        return True

    def declare_dead(self, now: float) -> bool:
        """Silent past its heartbeat timeout -> dead. False when a heartbeat
        won the race: the consumer lives. The caller releases its leases in
        the same transaction (``health.declare_dead``)."""
        # Conditional: the late beat either lands first (this matches
        # nothing) or finds the consumer dead and gets 410; never both.
        if not Consumer.objects.filter(Consumer.silent(now), pk=self.pk).update(status=ConsumerStatus.DEAD, dead_at=now):
            return False
        self.status, self.dead_at = ConsumerStatus.DEAD, now
        return True

    def leave(self, now: float | None = None) -> None:
        """A graceful leave: left now, unless it is gone already (one the
        monitor declared dead stays dead, and keeps the time it died). The
        caller releases its leases in the same transaction (``broker.leave``)."""
        now = time.time() if now is None else now
        if Consumer.objects.filter(pk=self.pk).exclude(status__in=GONE).update(status=ConsumerStatus.LEFT, dead_at=now):
            self.status, self.dead_at = ConsumerStatus.LEFT, now
        else:
            self.refresh_from_db(fields=["status", "dead_at"])
