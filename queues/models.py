"""Queues, messages, consumers, tokens and the counters that keep queue depth
readable without scanning the messages table.

Times on the hot tables are UNIX epoch seconds (floats): the claim and sweep
statements compare them in raw SQL on both PostgreSQL and SQLite, and a number
compares the same way on both, with no timezone or text-format pitfalls.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import time
import uuid
from fnmatch import fnmatchcase
from traceback import format_exception
from typing import Any, TypedDict

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.tasks import TaskResultStatus
from django.utils import timezone

from .states import MessageState

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
    oldest_ready_age: float | None


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
    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="messages", db_index=False)
    state = models.CharField(max_length=10, choices=MessageState.choices)
    priority = models.SmallIntegerField(default=0)
    # JSON text as the producer sent it: stored and returned without a decode.
    body = models.TextField()
    headers = models.TextField(default="{}")
    group_key = models.CharField(max_length=128, default="", blank=True)
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
        "Consumer", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages", db_index=False
    )
    # Set when the message was dead-lettered into another queue; redrive
    # sends it back there.
    # Indexed by the partial mq_msg_origin: almost every row has no origin.
    origin_queue = models.ForeignKey(
        Queue, null=True, blank=True, on_delete=models.SET_NULL, related_name="dead_lettered", db_index=False
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
            # Browsing and exact counts by state, oldest first.
            models.Index(fields=["queue", "state", "id"], name="mq_msg_state"),
            # Delayed rows coming due.
            models.Index(
                fields=["queue", "visible_at"], condition=Q(state="delayed"), name="mq_msg_due"
            ),
            # Leases running out (global sweep) and leases held by a consumer.
            models.Index(
                fields=["lease_expires_at"], condition=Q(state="in_flight"), name="mq_msg_lease"
            ),
            # Leases held by a consumer; also serves SET NULL when one is deleted.
            # Partial: a message nobody holds (most, and every new one) costs
            # no entry here on each insert and claim.
            models.Index(fields=["consumer"], condition=Q(consumer__isnull=False), name="mq_msg_consumer"),
            # FIFO group heads.
            models.Index(
                fields=["queue", "group_key", "id"], condition=~Q(group_key=""), name="mq_msg_group"
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
            models.Index(fields=["enqueued_at"], name="mq_msg_enqueued"),
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

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="+")


class ConsumerStatus(models.TextChoices):
    ALIVE = "alive", "Alive"
    #: Missed a heartbeat interval; still holds its leases.
    SUSPECT = "suspect", "Suspect"
    #: Missed heartbeats past its timeout (or left); its leases were released.
    DEAD = "dead", "Dead"


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
        consumer was declared dead: its leases went to others and it must
        register again."""
        now = time.time() if now is None else now
        # Conditional: a beat racing the monitor's death sentence either
        # lands first (and the consumer lives) or finds it dead, never both.
        if not Consumer.objects.filter(pk=self.pk).exclude(status=ConsumerStatus.DEAD).update(
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
        """A graceful leave: dead now, whatever its state. The caller
        releases its leases in the same transaction (``broker.leave``)."""
        now = time.time() if now is None else now
        Consumer.objects.filter(pk=self.pk).update(status=ConsumerStatus.DEAD, dead_at=now)
        self.status, self.dead_at = ConsumerStatus.DEAD, now


class Scope(models.TextChoices):
    PRODUCE = "produce", "Produce"
    CONSUME = "consume", "Consume"
    ADMIN = "admin", "Admin"


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a plain SHA-256 is as strong as a slow
    # password hash here and keeps per-request auth cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def _sealing_keys() -> list[bytes]:
    from django.conf import settings

    # One Fernet key per SECRET_KEY (current first, then fallbacks), so a
    # rotated SECRET_KEY listed in SECRET_KEY_FALLBACKS still opens old seals.
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [
        base64.urlsafe_b64encode(hmac.new(k.encode(), b"mqadmin.token-secret.v1", hashlib.sha256).digest())
        for k in keys
    ]


def seal_secret(secret: str) -> str:
    """Encrypt a token secret for storage (Fernet, key derived from SECRET_KEY)."""
    from cryptography.fernet import Fernet

    return Fernet(_sealing_keys()[0]).encrypt(secret.encode()).decode()


def open_secret(sealed: str) -> str | None:
    """The secret inside a seal, or None when no current or fallback SECRET_KEY opens it."""
    from cryptography.fernet import Fernet, InvalidToken, MultiFernet

    try:
        return MultiFernet([Fernet(k) for k in _sealing_keys()]).decrypt(sealed.encode()).decode()
    except InvalidToken:
        return None


# last_used_at is written at most this often per token (not on every request).
LAST_USED_RESOLUTION_SECONDS = 60.0


class TokenQuerySet(models.QuerySet["Token"]):
    def active(self) -> TokenQuerySet:
        """Tokens that were not revoked."""
        return self.filter(revoked_at__isnull=True)


class Token(models.Model):
    name = models.CharField(max_length=100, unique=True)
    key_id = models.CharField(max_length=40, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    # AWS Signature V4 (the SQS endpoint) signs with the secret itself, which
    # the hash above cannot check: keep it too, encrypted (seal_secret).
    # Empty for tokens issued before SigV4 support: they cannot sign.
    secret_sealed = models.TextField(null=True, blank=True, editable=False)
    scopes = models.CharField(max_length=100, help_text="Comma-separated: produce,consume,admin")
    queue_pattern = models.CharField(
        max_length=200, default="*", help_text="Glob of queue names this token may use."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id})"

    def revoke(self) -> bool:
        """Revoke the token now. False when it was already revoked: of two
        racing revokes one wins, and the time it was revoked stays the
        first. A process that verified it lately trusts it a few seconds
        longer (``api.auth.TOKEN_CACHE_SECONDS``) unless told to forget it
        (``api.auth.forget``)."""
        now = timezone.now()
        if not Token.objects.active().filter(pk=self.pk).update(revoked_at=now):
            return False
        self.revoked_at = now
        return True

    def touch(self, now: dt.datetime | None = None) -> None:
        """Note a use in ``last_used_at``: written when the last note is
        older than LAST_USED_RESOLUTION_SECONDS, so not on every request."""
        now = timezone.now() if now is None else now
        last = self.last_used_at
        if last is None or (now - last).total_seconds() > LAST_USED_RESOLUTION_SECONDS:
            Token.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)

    @classmethod
    def issue(cls, name: str, scopes: list[str], queue_pattern: str = "*") -> tuple[Token, str]:
        """Create a token; returns it with the full ``<key id>.<secret>`` string,
        which is never stored and cannot be shown again."""
        key_id = "mq" + secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        token = cls.objects.create(
            name=name,
            key_id=key_id,
            secret_hash=hash_secret(secret),
            secret_sealed=seal_secret(secret),
            scopes=",".join(sorted(set(scopes))),
            queue_pattern=queue_pattern,
        )
        return token, f"{key_id}.{secret}"

    def check_secret(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))

    def signing_secret(self) -> str | None:
        """The secret for verifying request signatures (SigV4), or None."""
        return open_secret(self.secret_sealed) if self.secret_sealed else None

    def allows(self, scope: str, queue_name: str | None = None) -> bool:
        scopes = self.scope_set
        # admin is the operator's scope: it may do everything the others may.
        if scope not in scopes and Scope.ADMIN not in scopes:
            return False
        return queue_name is None or fnmatchcase(queue_name, self.queue_pattern)

    def sees(self, queue_name: str) -> bool:
        return fnmatchcase(queue_name, self.queue_pattern)


# --------------------------------------------------------------------------- #
# Django tasks (queues.tasks.MQBackend)
# --------------------------------------------------------------------------- #


class TaskRecord(models.Model):
    """The result of one ``django.tasks`` task enqueued into mqadmin: what
    ``get_result()`` reports. The work itself travels as a message."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    backend = models.CharField(max_length=100)
    task_path = models.CharField(max_length=300)
    queue_name = models.CharField(max_length=80)
    priority = models.SmallIntegerField(default=0)
    takes_context = models.BooleanField(default=False)
    run_after = models.DateTimeField(null=True, blank=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    # django.tasks.TaskResultStatus values: READY, RUNNING, FAILED, SUCCESSFUL.
    status = models.CharField(max_length=10, default="READY")
    message_id = models.BigIntegerField(null=True, blank=True)
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    return_value = models.JSONField(null=True, blank=True)
    # [{"exception_class_path": ..., "traceback": ...}], one per failed attempt.
    errors = models.JSONField(default=list, blank=True)
    worker_ids = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "enqueued_at"], name="mq_task_status")]

    def __str__(self) -> str:
        return f"task {self.task_path} {self.id} ({self.status})"

    # Single-row transitions, as django-tasks' DBTaskResult has them. The
    # caller holds the row locked (select_for_update) in a transaction.

    @property
    def finished(self) -> bool:
        return self.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)

    def claim(self, worker_id: str, now: dt.datetime | None = None) -> None:
        """A worker starts the task (again, after a crash): RUNNING."""
        now = timezone.now() if now is None else now
        self.status = TaskResultStatus.RUNNING
        self.started_at = self.started_at or now
        self.last_attempted_at = now
        self.worker_ids = [*self.worker_ids, worker_id]
        self.save(update_fields=["status", "started_at", "last_attempted_at", "worker_ids"])

    def set_successful(self, return_value: Any) -> None:
        """The task returned ``return_value`` (JSON): SUCCESSFUL."""
        self.status = TaskResultStatus.SUCCESSFUL
        self.finished_at = timezone.now()
        self.return_value = return_value
        self.save(update_fields=["status", "finished_at", "return_value"])

    def set_failed(self, error: BaseException) -> None:
        """The task raised ``error``: FAILED, with the exception's class and
        traceback added to ``errors``."""
        kind = type(error)
        self.status = TaskResultStatus.FAILED
        self.finished_at = timezone.now()
        self.errors = [
            *self.errors,
            {"exception_class_path": f"{kind.__module__}.{kind.__qualname__}", "traceback": "".join(format_exception(error))},
        ]
        self.save(update_fields=["status", "finished_at", "errors"])
