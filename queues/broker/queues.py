"""Queues: look up (cached), create or update, list with counts, delete."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save

from .. import events, notify
from ..backends import dialect
from ..exceptions import InvalidValue, QueueExists, QueueInUse, QueueNotFound
from ..models import QUEUE_NAME_RULE, Message, Queue, QueueCounts, QueueStats, is_queue_name
from .counters import Tally, count_by, queue_counts

QUEUE_FIELDS = (
    "visibility_timeout",
    "max_deliveries",
    "dead_letter_queue",
    "retention",
    "delay",
    "fifo",
    "paused",
    "max_message_bytes",
    "max_depth",
)

class QueueCache:
    """Queue lookups by name, cached per process: every API call starts with
    one, and its ORM query cost more than the work of a receive. Any save or
    delete of a queue in this process forgets them all at once (and again
    at commit); other processes see a change within ``SECONDS``."""

    SECONDS = 1.0

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Queue]] = {}

    def get(self, name: str) -> Queue | None:
        hit = self.entries.get(name)
        if hit is not None and hit[0] > time.monotonic():
            return copy.copy(hit[1])  # callers may change their copy
        return None

    def put(self, queue: Queue) -> None:
        self.entries[queue.name] = (time.monotonic() + self.SECONDS, copy.copy(queue))

    def forget(self, **_: Any) -> None:
        """Drop every cached lookup (a signal receiver, too)."""
        self.entries.clear()
        if connection.in_atomic_block:
            transaction.on_commit(self.entries.clear)


cache = QueueCache()
QUEUE_CACHE_SECONDS = QueueCache.SECONDS
forget_queues = cache.forget
# A queue changed in another process (its NOTIFY): read it afresh.
notify.on_change(cache.entries.clear)

post_save.connect(cache.forget, sender=Queue, dispatch_uid="mq-forget-queues-save")
post_delete.connect(cache.forget, sender=Queue, dispatch_uid="mq-forget-queues-delete")


def get_queue(name: str) -> Queue:
    """The queue called ``name``; raises QueueNotFound."""
    queue = cache.get(name)
    if queue is not None:
        return queue
    if not is_queue_name(name):
        raise QueueNotFound(f"No queue named {name[:100]!r} (names are {QUEUE_NAME_RULE}).")
    try:
        queue = Queue.objects.select_related("dead_letter_queue").get(name=name)
    except Queue.DoesNotExist:
        raise QueueNotFound(f"No queue named {name!r}.") from None
    cache.put(queue)
    return queue


_aget_queue = sync_to_async(get_queue)


async def aget_queue(name: str) -> Queue:
    """``get_queue`` for async callers; a cached queue costs no thread hop."""
    queue = cache.get(name)
    if queue is not None:
        return queue
    return await _aget_queue(name)


def put_queue(
    name: str, config: dict[str, Any], *, create_only: bool = False, dead_letter_cycles: bool = False
) -> tuple[Queue, bool]:
    """Create the queue or update the given settings. Returns (queue, created).
    Raises QueueExists with ``create_only``, InvalidValue for a bad setting,
    among them a dead-letter queue whose chain leads back to this queue
    (allowed only with ``dead_letter_cycles``, as SQS allows it)."""
    unknown = set(config) - set(QUEUE_FIELDS)
    if unknown:
        raise InvalidValue(f"Unknown queue setting {sorted(unknown)[0]!r}.")
    values = dict(config)
    dlq_name = values.get("dead_letter_queue")
    if dlq_name is not None:
        if dlq_name == name:
            raise InvalidValue(f"dead-letter cycle: {name} → {name} (a queue cannot be its own dead-letter queue).")
        try:
            values["dead_letter_queue"] = Queue.objects.get(name=dlq_name)
        except Queue.DoesNotExist:
            raise InvalidValue(f"Dead-letter queue {dlq_name!r} does not exist; create it first.") from None
    with transaction.atomic():
        if dlq_name is not None and not dead_letter_cycles:
            check_dead_letter_chain(name, dlq_name)
        queue = Queue.objects.select_for_update().filter(name=name).first()
        created = queue is None
        if queue is None:
            queue = Queue(name=name)
        elif create_only:
            raise QueueExists(f"Queue {name!r} already exists.")
        for key, value in values.items():
            setattr(queue, key, value)
        try:
            queue.full_clean()
        except ValidationError as exc:
            # A domain error, so every caller (API, mq command, admin) reports it plainly.
            field, messages = next(iter(exc.message_dict.items()))
            raise InvalidValue(f"{field}: {messages[0]}") from None
        queue.save()
        if values.get("fifo") and not created:
            # Messages sent while it was a standard queue have no slot.
            with connection.cursor() as cur:
                cur.execute(*dialect().slots_for_fifo(queue.id))
        if created:
            QueueStats.objects.create(queue=queue)
        elif values:
            # Receives waiting on it read it again (a resumed queue delivers,
            # a new visibility timeout applies to their next claim).
            tally = Tally()
            tally.wake_all(queue.id)
            tally.save()
    return queue, created


def check_dead_letter_chain(name: str, dlq_name: str) -> None:
    """Raise InvalidValue when making ``dlq_name`` the dead-letter queue of
    ``name`` would close a loop: a message would pass round for ever.

    Checks are serialized until the caller's transaction ends (``put_queue``
    saves the link in it): two updates that would close a loop between them
    (a → b and b → a at once) each see no loop alone, so the second must
    wait for the first and see its link. One lock for all such changes, not
    the chain's rows: rows locked as a chain is found cannot be locked in
    one order, and changing a dead-letter queue is rare."""
    with transaction.atomic():
        if (serialize := dialect().serialize_dead_letter_links()) is not None:
            with connection.cursor() as cur:
                cur.execute(*serialize)
        loop = [name]
        hop: str | None = dlq_name
        # Stops too where the chain meets itself: a loop made where loops
        # are allowed (SQS) that does not pass through this queue.
        while hop is not None and hop not in loop:
            loop.append(hop)
            hop = Queue.objects.filter(name=hop).values_list("dead_letter_queue__name", flat=True).first()
        if hop == name:
            raise InvalidValue(f"dead-letter cycle: {' → '.join([*loop, name])}")


def list_queues(names: Iterable[str] | None = None) -> list[tuple[Queue, QueueCounts]]:
    """Queues (all, or these), by name, each with its live counts."""
    qs = Queue.objects.select_related("dead_letter_queue").order_by("name")
    if names is not None:
        qs = qs.filter(name__in=list(names))
    queues = list(qs)
    counts = queue_counts([q.id for q in queues])
    return [(q, counts.get(q.id, QueueCounts())) for q in queues]


def hold_queues(queue_ids: Iterable[int]) -> set[int]:
    """Those of these queues that still exist, kept from being deleted until
    the caller's transaction ends: whoever moves messages into a queue holds
    it first (``Statements.queue_held`` says why)."""
    ids = set(queue_ids)
    if not ids:
        return set()
    with connection.cursor() as cur:
        cur.execute(*dialect().hold_queues(ids))
        return {row[0] for row in cur.fetchall()}


def ready_ids(queue_id: int, *, after: int | None = None, newest: bool = False, limit: int) -> list[int]:
    """Up to ``limit`` ids of the queue's ready messages, by id (newest first
    with ``newest``), past ``after``: through the claim's index, which is the
    only one that holds ready rows on PostgreSQL (``Statements.ready_ids``)."""
    with connection.cursor() as cur:
        cur.execute(*dialect().ready_ids(queue_id, after=after, newest=newest, limit=limit))
        return [mid for (mid,) in cur.fetchall()]


def delete_queue(queue: Queue) -> None:
    """Delete a queue and every message in it. Raises QueueInUse when other
    queues dead-letter into it."""
    with transaction.atomic():
        users = list(Queue.objects.filter(dead_letter_queue=queue).values_list("name", flat=True))
        if users:
            raise QueueInUse(f"Queue {queue.name!r} is the dead-letter queue of {', '.join(users)}.")
        # Messages that were dead-lettered into it leave their origin's count.
        tally = Tally()
        for origin_id, n in count_by(Message.objects.filter(queue=queue, origin_queue__isnull=False), "origin_queue_id"):
            tally.add(origin_id, "dead_out", -n)
        tally.deltas.pop(queue.id, None)
        # Receives waiting on it wake, find it gone and say so.
        tally.wake_all(queue.id)
        tally.save()
        Message.objects.filter(queue=queue).delete()
        queue_id = queue.pk
        queue.delete()
        # What was sent or moved into it meanwhile: each such statement held
        # the queue's row (``Statements.queue_held``), so the delete above
        # waited for it to commit, and from here on none finds the queue.
        Message.objects.filter(queue_id=queue_id).delete()
        Message.objects.filter(origin_queue_id=queue_id).update(origin_queue=None)
        events.emit("queue_deleted", queue.name)
