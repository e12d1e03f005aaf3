"""Every multi-row operation on queues and messages, one module per concern.

Views, websocket streams, SQS, admin actions, commands and the monitor call
these functions; nothing else writes messages. Each runs in one transaction
(or one statement), keeps the queue counters exact (``counters``), announces
events after commit, and wakes waiting receives when messages become ready.
The SQL is in ``queues.backends``, per database.

- ``queues``: look up, create, update, list, delete queues
- ``counters``: exact depth without counting rows
- ``publish``: send, deduplicate, hand new messages to waiting receives
- ``claim``: lease messages to a receive (the one claim path)
- ``receipts``: ack, nack, extend, release
- ``durability``: which commits wait for the WAL flush (``MQ_ASYNC_COMMIT``)
- ``waiting``: the one long-poll loop
- ``consumers``: register, heartbeat, leave
- ``operator``: requeue, move, dead-letter, delete, purge, redrive, pause, browse
- ``maintenance``: what the monitor runs each tick
"""

from __future__ import annotations

from .claim import MAX_RECEIVE, Delivery, Received, ack_and_receive, areceive_on, one_statement, receive
from .consumers import (
    check_consumer,
    consumer_in_flight,
    get_consumer,
    heartbeat,
    heartbeat_interval,
    leave,
    register_consumer,
    release_consumer,
)
from .counters import Tally, fold_stats, queue_counts, recount
from .maintenance import SWEEP_BATCH, enforce_retention, expire_leases, promote_due, prune_dedup, vacuum_unvacuumed
from .operator import (
    MAX_OPERATOR_MESSAGES,
    browse,
    dead_letter_now,
    delete_messages,
    move,
    pause,
    purge,
    redrive,
    requeue,
    resume,
)
from .publish import NewMessage, Published, publish
from .queues import (
    QUEUE_CACHE_SECONDS,
    QUEUE_FIELDS,
    aget_queue,
    check_dead_letter_chain,
    delete_queue,
    forget_queues,
    get_queue,
    list_queues,
    put_queue,
    ready_ids,
)
from .receipts import ReceiptResult, ack, extend, match_receipts, nack, parse_receipts, release
from .waiting import (
    first_look,
    long_poll,
    release_unanswered,
    release_unanswered_now,
    thread_looks,
    unlost,
)

__all__ = [
    "MAX_OPERATOR_MESSAGES",
    "MAX_RECEIVE",
    "QUEUE_CACHE_SECONDS",
    "QUEUE_FIELDS",
    "SWEEP_BATCH",
    "Delivery",
    "NewMessage",
    "Published",
    "ReceiptResult",
    "Received",
    "Tally",
    "ack",
    "ack_and_receive",
    "aget_queue",
    "areceive_on",
    "browse",
    "check_consumer",
    "check_dead_letter_chain",
    "consumer_in_flight",
    "dead_letter_now",
    "delete_messages",
    "delete_queue",
    "enforce_retention",
    "expire_leases",
    "extend",
    "first_look",
    "fold_stats",
    "forget_queues",
    "get_consumer",
    "get_queue",
    "heartbeat",
    "heartbeat_interval",
    "leave",
    "list_queues",
    "long_poll",
    "match_receipts",
    "move",
    "nack",
    "one_statement",
    "parse_receipts",
    "pause",
    "promote_due",
    "prune_dedup",
    "publish",
    "purge",
    "put_queue",
    "queue_counts",
    "ready_ids",
    "receive",
    "recount",
    "redrive",
    "register_consumer",
    "release",
    "release_consumer",
    "release_unanswered",
    "release_unanswered_now",
    "requeue",
    "resume",
    "thread_looks",
    "unlost",
    "vacuum_unvacuumed",
]
