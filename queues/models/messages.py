"""Messages and their dedup keys.

Times on the hot tables are UNIX epoch seconds (floats): the claim and sweep
statements compare them in raw SQL on both PostgreSQL and SQLite, and a number
compares the same way on both, with no timezone or text-format pitfalls.
"""

from __future__ import annotations

import time
from typing import TypedDict

from django.db import models
from django.db.models import F, Q

from ..states import MessageState
from .queues import Queue, epoch_to_iso

# The rows mq_msg_state holds: those no other index finds by state. On
# PostgreSQL every new row version gets an entry in each index whose
# condition it meets, whether or not the index's columns changed, so each
# state left out saves an entry: a claim's (in flight: mq_msg_lease finds
# those) and a send's (ready: mq_msg_claim finds those, ``ready_ids``). A
# send of a ready message then writes 3. On SQLite, which rewrites only the
# entries whose columns changed, and whose planner cannot prove that a
# query's state implies this condition, the index is whole (migrations 0012
# and 0017). A migration that remakes the table on SQLite rebuilds it from
# this definition, and must make it whole again, as 0017 does after 0016.
BY_STATE = Q(state__in=[MessageState.DELAYED, MessageState.DEAD])


class MessageQuerySet(models.QuerySet["Message"]):
    def ready(self) -> MessageQuerySet:
        return self.filter(state=MessageState.READY)

    def delayed(self) -> MessageQuerySet:
        return self.filter(state=MessageState.DELAYED)

    def in_flight(self) -> MessageQuerySet:
        return self.filter(state=MessageState.IN_FLIGHT)

    def dead(self) -> MessageQuerySet:
        return self.filter(state=MessageState.DEAD)

    def dead_of(self, queue: Queue | int) -> MessageQuerySet:
        """The dead messages of a queue as the API counts and browses them:
        dead in it, or dead-lettered out of it into its dead-letter queue
        (in whatever state they are there)."""
        return self.filter(Q(queue=queue, state=MessageState.DEAD) | Q(origin_queue=queue))

    def redrivable(self, queue: Queue | int) -> MessageQuerySet:
        """What a redrive of ``queue`` moves: messages dead in it, and messages
        dead-lettered into it that are still waiting (ready or delayed; a
        leased one is left to its holder). ``broker.redrive`` selects this
        same set, each message going back to its origin queue or staying."""
        waiting = [MessageState.READY, MessageState.DELAYED]
        return self.filter(queue=queue).filter(
            Q(state=MessageState.DEAD) | Q(origin_queue__isnull=False, state__in=waiting)
        )

    def in_id_order(self, *, newest: bool = False, few: bool = False) -> MessageQuerySet:
        """Ordered by id (newest first with ``newest``). ``few``: the rows
        are a few of the queue's, which no index keeps in id order (in-flight
        ones, held by mq_msg_lease; a page of ready ones, picked by
        ``ready_ids``). The one (queue, id) index, mq_msg_queue, holds every
        row: walking it for the few among a long backlog reads the whole
        backlog, and the planner, counting on them being spread evenly,
        would do just that. Ordered by an expression it cannot walk, it
        reads them through their own index and sorts them."""
        key = F("id") + 0 if few else F("id")
        return self.order_by(key.desc() if newest else key.asc())

    def expired(self, now: float | None = None) -> MessageQuerySet:
        """In-flight messages whose lease has run out."""
        return self.in_flight().filter(lease_expires_at__lte=now if now is not None else time.time())


class MessageDict(TypedDict):
    id: str
    queue: str
    state: str
    body: object
    headers: dict[str, str]
    priority: int
    group: str | None
    dedup_id: str | None
    delivery_count: int
    enqueued_at: str | None
    visible_at: str | None
    lease_expires_at: str | None
    consumer: str | None
    origin_queue: str | None
    last_error: str


class Message(models.Model):
    # Indexed by mq_msg_queue (queue, id), which also serves the FK's lookups.
    # No constraint in the database (nor on the consumer and origin below):
    # PostgreSQL checks a foreign key with a query per row written, at
    # commit, which took more of a send of 100 than its index entries. Who
    # writes a queue id checks that queue once a statement instead
    # (``Statements.queue_held``), and ``broker.delete_queue`` sweeps up
    # what arrived while it ran; a claim's consumer is checked alive and
    # held by the claim itself (``consumer_alive``).
    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="messages", db_index=False, db_constraint=False)
    state = models.CharField(max_length=10, choices=MessageState.choices)
    priority = models.SmallIntegerField(default=0)
    # JSON text as the producer sent it: stored and returned without a decode.
    body = models.TextField()
    headers = models.TextField(default="{}")
    group_key = models.CharField(max_length=128, default="", blank=True)
    # The FIFO group's slot (``hashing.slot_of``), fixed at send: ownership
    # of groups among consumers is decided per slot. Without a group, -1 in a
    # FIFO queue (everyone's) and NULL in a standard one, which keeps those
    # messages out of mq_msg_slot: a standard queue pays nothing for it.
    group_slot = models.SmallIntegerField(null=True, blank=True)
    dedup_id = models.CharField(max_length=128, null=True, blank=True)
    delivery_count = models.PositiveIntegerField(default=0)
    enqueued_at = models.FloatField()
    # When a DELAYED message becomes READY.
    visible_at = models.FloatField()
    # The lease: a fresh random token per delivery fences stale acks.
    lease_token = models.CharField(max_length=32, null=True, blank=True)
    lease_expires_at = models.FloatField(null=True, blank=True)
    # Indexed by mq_msg_consumer (a plain btree: no varchar_pattern_ops twin).
    consumer = models.ForeignKey(
        "Consumer", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages", db_index=False, db_constraint=False
    )
    # Set when the message was dead-lettered into another queue; redrive
    # sends it back there.
    # Indexed by the partial mq_msg_origin: almost every row has no origin.
    origin_queue = models.ForeignKey(
        Queue, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_lettered", db_index=False, db_constraint=False
    )
    last_error = models.TextField(default="", blank=True)
    dead_at = models.FloatField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        indexes = [
            # The claim: ready rows of one queue in delivery order. Partial, so
            # leased, delayed and dead rows never sit in the claim's path.
            models.Index(
                fields=["queue", "-priority", "id"],
                condition=Q(state="ready"),
                name="mq_msg_claim",
            ),
            # Browsing and exact counts of delayed and dead rows, oldest
            # first (``BY_STATE``).
            models.Index(fields=["queue", "state", "id"], condition=BY_STATE, name="mq_msg_state"),
            # Delayed rows coming due.
            models.Index(
                fields=["queue", "visible_at"], condition=Q(state="delayed"), name="mq_msg_due"
            ),
            # A queue's leases, by when they run out: the sweep, a receive
            # taking back its queue's lapsed leases, browsing in-flight rows.
            models.Index(
                fields=["queue", "lease_expires_at"], condition=Q(state="in_flight"), name="mq_msg_lease"
            ),
            # Leases held by a consumer; also serves SET NULL when one is deleted.
            # Partial: a message nobody holds (most, and every new one) costs
            # no entry here on each insert and claim.
            models.Index(fields=["consumer"], condition=Q(consumer__isnull=False), name="mq_msg_consumer"),
            # FIFO group heads.
            models.Index(
                fields=["queue", "group_key", "id"], condition=~Q(group_key=""), name="mq_msg_group"
            ),
            # A FIFO claim among many consumers: the ready rows of each slot
            # it owns, in delivery order (``hashing``).
            models.Index(
                fields=["queue", "group_slot", "-priority", "id"],
                condition=Q(state="ready", group_slot__isnull=False),
                name="mq_msg_slot",
            ),
            # Redrive: messages dead-lettered out of a queue.
            models.Index(
                fields=["origin_queue"], condition=Q(origin_queue__isnull=False), name="mq_msg_origin"
            ),
            # The admin's message list (newest first) and its filters and search.
            # mq_msg_queue replaces the plain index of the queue foreign key;
            # the partial ones hold only the rows they can match.
            models.Index(fields=["queue", "id"], name="mq_msg_queue"),
            models.Index(fields=["id"], condition=Q(state="dead"), name="mq_msg_dead"),
            models.Index(fields=["dedup_id"], condition=Q(dedup_id__isnull=False), name="mq_msg_dedup"),
            models.Index(fields=["group_key", "id"], condition=~Q(group_key=""), name="mq_msg_group_any"),
        ]

    def __str__(self) -> str:
        return f"message {self.pk} ({self.state})"

    @property
    def receipt(self) -> str | None:
        return f"{self.pk}.{self.lease_token}" if self.lease_token else None

    def to_dict(self) -> MessageDict:
        import orjson

        return {
            "id": str(self.pk),
            "queue": self.queue.name,
            "state": self.state,
            "body": orjson.Fragment(self.body),
            "headers": orjson.loads(self.headers),
            "priority": self.priority,
            "group": self.group_key or None,
            "dedup_id": self.dedup_id,
            "delivery_count": self.delivery_count,
            "enqueued_at": epoch_to_iso(self.enqueued_at),
            "visible_at": epoch_to_iso(self.visible_at),
            "lease_expires_at": epoch_to_iso(self.lease_expires_at)
            if self.state == MessageState.IN_FLIGHT
            else None,
            "consumer": self.consumer_id,
            "origin_queue": self.origin_queue.name if self.origin_queue is not None else None,
            "last_error": self.last_error,
        }


class DedupKey(models.Model):
    """A producer's dedup id, remembered for the dedup window even after the
    message it named was acked: a retried send must not deliver twice."""

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="+")
    dedup_id = models.CharField(max_length=128)
    message_id = models.BigIntegerField(null=True)
    expires_at = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["queue", "dedup_id"], name="mq_dedup_unique")
        ]
        indexes = [models.Index(fields=["expires_at"], name="mq_dedup_expiry")]
