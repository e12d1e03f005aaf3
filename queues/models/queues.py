"""Queues: names, settings, live counts, and the counters that keep queue depth
readable without scanning the messages table.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Annotated, TypedDict

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from pydantic import Field

#: A queue's name: 1-80 of A-Z a-z 0-9 _ . -, but not "." or "..": as a
#: segment of a URL path those mean "here" and "the parent", so browsers,
#: HTTP clients and proxies resolve them away and such a queue could never
#: be opened. Written for JSON Schema (the API's OpenAPI document); Python
#: matches it whole (``is_queue_name``), so a trailing newline is no match.
QUEUE_NAME_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,80}$"
QUEUE_NAME_RULE = "1-80 characters of A-Z a-z 0-9 _ . - (not . or ..)"
_QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN)
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024


def is_queue_name(name: str) -> bool:
    """Whether ``name`` may name a queue: the one rule, wherever a name is
    made (the API, the admin, ``mq queue create``, SQS, django.tasks) or
    looked up."""
    return _QUEUE_NAME.fullmatch(name) is not None


def validate_queue_name(name: str) -> None:
    """The Queue model's validator (the admin's form, ``broker.put_queue``)."""
    if not is_queue_name(name):
        raise ValidationError(f"Use {QUEUE_NAME_RULE}.", code="invalid")


# Cached: the messages of one batch share their enqueue and lease times.
@functools.lru_cache(maxsize=4096)
def epoch_to_iso(value: float | None) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(value, tz=dt.UTC).isoformat().replace("+00:00", "Z")


class QueueCountsDict(TypedDict):
    ready: int
    delayed: int
    in_flight: int
    dead: int
    # The description is the API's OpenAPI document's (pydantic reads it).
    oldest_ready_age: Annotated[
        float | None,
        Field(description="Seconds since the oldest ready message was sent (to a millisecond); null when none is ready."),
    ]


class QueueDict(QueueCountsDict):
    name: str
    visibility_timeout: int
    max_deliveries: int
    dead_letter_queue: str | None
    retention: int | None
    delay: int
    fifo: bool
    paused: bool
    max_message_bytes: int
    max_depth: int | None
    created_at: str


class Queue(models.Model):
    name = models.CharField(
        max_length=80,
        unique=True,
        validators=[validate_queue_name],
    )
    visibility_timeout = models.PositiveIntegerField(
        default=30, validators=[MaxValueValidator(12 * 3600)], help_text="Seconds a lease lasts."
    )
    max_deliveries = models.PositiveIntegerField(
        default=5, help_text="Deliveries without an ack before dead-lettering; 0 = unlimited."
    )
    dead_letter_queue = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="dead_letter_sources",
    )
    retention = models.PositiveIntegerField(
        null=True, blank=True, help_text="Seconds a waiting message is kept; empty = forever."
    )
    delay = models.PositiveIntegerField(default=0, help_text="Default delivery delay (s).")
    fifo = models.BooleanField(default=False, help_text="One message per group in flight.")
    paused = models.BooleanField(default=False, help_text="A paused queue delivers nothing.")
    max_message_bytes = models.PositiveIntegerField(
        default=DEFAULT_MAX_MESSAGE_BYTES, validators=[MinValueValidator(1)]
    )
    max_depth = models.PositiveIntegerField(
        null=True, blank=True, help_text="Sends are refused (429) beyond this many waiting."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def to_dict(self, counts: QueueCounts) -> QueueDict:
        """The queue with its live counts: what the API answers, what the
        dashboard shows and what SQS's attributes are read from."""
        return {
            "name": self.name,
            "visibility_timeout": self.visibility_timeout,
            "max_deliveries": self.max_deliveries,
            "dead_letter_queue": self.dead_letter_queue.name if self.dead_letter_queue else None,
            "retention": self.retention,
            "delay": self.delay,
            "fifo": self.fifo,
            "paused": self.paused,
            "max_message_bytes": self.max_message_bytes,
            "max_depth": self.max_depth,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            **counts.to_dict(),
        }


class QueueCounts:
    """Live counts of one queue, as the API and dashboard report them."""

    __slots__ = ("dead", "delayed", "in_flight", "oldest_ready_age", "ready", "totals")

    def __init__(
        self,
        ready: int = 0,
        delayed: int = 0,
        in_flight: int = 0,
        dead: int = 0,
        oldest_ready_age: float | None = None,
        totals: dict[str, int] | None = None,
    ) -> None:
        self.ready = ready
        self.delayed = delayed
        self.in_flight = in_flight
        self.dead = dead
        self.oldest_ready_age = oldest_ready_age
        self.totals = totals or {}

    def to_dict(self) -> QueueCountsDict:
        """The counts as the API and the dashboard's ``queue`` frames carry them."""
        return {
            "ready": self.ready,
            "delayed": self.delayed,
            "in_flight": self.in_flight,
            "dead": self.dead,
            "oldest_ready_age": self.oldest_ready_age,
        }




COUNTER_FIELDS = (
    # current depth, by state of the messages stored in the queue
    "ready",
    "delayed",
    "in_flight",
    "dead_state",
    # messages dead-lettered out of this queue into its dead-letter queue
    "dead_out",
    # monotonic totals (Prometheus counters, dashboard rates)
    "sent_total",
    "received_total",
    "acked_total",
    "nacked_total",
    "redelivered_total",
    "dead_lettered_total",
    "purged_total",
    "expired_total",
)


class _Counters(models.Model):
    ready = models.BigIntegerField(default=0)
    delayed = models.BigIntegerField(default=0)
    in_flight = models.BigIntegerField(default=0)
    dead_state = models.BigIntegerField(default=0)
    dead_out = models.BigIntegerField(default=0)
    sent_total = models.BigIntegerField(default=0)
    received_total = models.BigIntegerField(default=0)
    acked_total = models.BigIntegerField(default=0)
    nacked_total = models.BigIntegerField(default=0)
    redelivered_total = models.BigIntegerField(default=0)
    dead_lettered_total = models.BigIntegerField(default=0)
    purged_total = models.BigIntegerField(default=0)
    expired_total = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class QueueStats(_Counters):
    """Folded counters of one queue. Current = this row + its pending deltas."""

    queue = models.OneToOneField(Queue, on_delete=models.CASCADE, primary_key=True)


class QueueStatsDelta(_Counters):
    """One transaction's change to a queue's counters.

    Transactions append deltas instead of updating one counter row, so
    concurrent producers and consumers of a queue never queue up on a hot row
    lock; the monitor folds deltas into ``QueueStats`` about once a second.
    """

    # No constraint and no index: every send, claim and ack writes a delta,
    # and the constraint's check locked the queue's row (FOR KEY SHARE) in
    # each of them, so that a queue's producers and consumers all wrote
    # that one row's lock (a new multixact for each while others held it).
    # Measured with 4 clients appending deltas to one queue: 13.5-15.6k
    # against 18.2-20.9k a second without the constraint. Deltas live about
    # a second before the fold and are read whole or by queue from a small
    # table: the index bought nothing. A delta that outlives its queue is
    # dropped by the fold (it updates no stats row).
    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False)
