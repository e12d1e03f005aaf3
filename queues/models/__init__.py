"""The stored objects, one module each: queues (and their counters),
messages, consumers, tokens, task records. Single-row transitions are their
methods; multi-row operations are the broker's."""

from __future__ import annotations

from .consumers import GONE, Consumer, ConsumerDict, ConsumerQuerySet, ConsumerStatus, _consumer_id
from .messages import DedupKey, Message, MessageDict, MessageQuerySet
from .queues import (
    COUNTER_FIELDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    QUEUE_NAME_PATTERN,
    QUEUE_NAME_RULE,
    Queue,
    QueueCounts,
    QueueCountsDict,
    QueueDict,
    QueueStats,
    QueueStatsDelta,
    epoch_to_iso,
    is_queue_name,
    validate_queue_name,
)
from .tasks import TaskRecord
from .tokens import LAST_USED_RESOLUTION_SECONDS, Scope, Token, TokenQuerySet, hash_secret, open_secret, seal_secret

__all__ = [
    "COUNTER_FIELDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GONE",
    "LAST_USED_RESOLUTION_SECONDS",
    "QUEUE_NAME_PATTERN",
    "QUEUE_NAME_RULE",
    "Consumer",
    "ConsumerDict",
    "ConsumerQuerySet",
    "ConsumerStatus",
    "DedupKey",
    "Message",
    "MessageDict",
    "MessageQuerySet",
    "Queue",
    "QueueCounts",
    "QueueCountsDict",
    "QueueDict",
    "QueueStats",
    "QueueStatsDelta",
    "Scope",
    "TaskRecord",
    "Token",
    "TokenQuerySet",
    "_consumer_id",
    "epoch_to_iso",
    "hash_secret",
    "is_queue_name",
    "open_secret",
    "seal_secret",
    "validate_queue_name",
]
