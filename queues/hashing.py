"""Which live consumer owns a FIFO group: groups hash into a fixed number of
slots, and slots go to a queue's live consumers by rendezvous (highest
random weight) hashing, as Redis Cluster's hash slots or Kafka's partitions.

A message's slot is ``slot_of(group)``, computed once when it is sent and
stored with it (``Message.group_slot``; without a group, UNGROUPED in a FIFO
queue, NULL in a standard one). Every consumer ``c`` scores every slot ``s``
with ``weight(c, s)``, the ``s``-th 64-bit word of SHAKE-128(c), and a slot
belongs to the consumer with the highest score (ties, never seen in
practice, to the smaller id). When a consumer dies or
leaves only the slots it won move, each to its runner-up; when one joins it
takes only the slots it now wins. No ring, no virtual nodes, no shared
state: any process that knows the live consumers computes the same owners.

Why slots: a claim that decided ownership per row scored each row once per
live consumer, so its cost grew with the consumers. Now a process works out
the owners of ``SLOTS`` slots once per set of live consumers
(``assignment``: 40-80 ms for 200 consumers from scratch, about 1 ms when
a consumer joins or goes, derived from the set before) and the claim
filters on the slots its consumer owns, a list of ints: on PostgreSQL a
consumer among many probes each of its slots through mq_msg_slot
(``backends.postgresql.PostgreSQL.claim_in_slots``), so the rows of groups
it does not own are never read.

``SLOTS`` is 4096: with 200 consumers each owns about 20 (between 10 and 33
in a draw of 200 ids), so groups spread evenly enough; with 1024 the spread
was 1 to 13. More slots cost memory (32 kB of weights per consumer) and
time when the owners are worked out from scratch.

Ownership is affinity, not the safety net: the FIFO head test in the claim
still keeps a group to one message in flight, in order, even when two
receivers briefly disagree about who is alive.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from django.db import connection

from .backends import dialect

SLOTS = 4096
# The slot of a message without a group in a FIFO queue: every consumer's.
UNGROUPED = -1
# The same number as ``slot_of`` in PostgreSQL's SQL (the migration that
# added the slots computed those of the messages already stored with it).
SLOT_SQL_POSTGRESQL = f"('x' || substr(md5(group_key), 1, 4))::bit(16)::int % {SLOTS}"

# Assignments kept per process: one per set of live consumers seen lately
# (queues with the same consumers share one).
ASSIGNMENTS_KEPT = 64
# Past this many consumers joined or gone, an assignment is worked out from
# scratch rather than from the closest one kept.
MAX_CHANGES_DERIVED = 8


@functools.lru_cache(maxsize=65536)
def slot_of(group: str) -> int:
    """The slot of a FIFO group: the first 16 bits of md5(group) modulo SLOTS."""
    digest = hashlib.md5(group.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:2], "big") % SLOTS


@functools.lru_cache(maxsize=512)
def weights(consumer_id: str) -> array[int]:
    """Every slot's weight for a consumer: the words of SHAKE-128(id), read
    little-endian, one a slot. 32 kB a consumer, kept for the 512 latest."""
    out = array("Q", hashlib.shake_128(consumer_id.encode()).digest(8 * SLOTS))
    if sys.byteorder == "big":
        out.byteswap()
    return out


def weight(consumer_id: str, slot: int) -> int:
    return weights(consumer_id)[slot]


def owner(slot: int, consumer_ids: Iterable[str]) -> str | None:
    """The consumer that owns ``slot`` (ties go to the smaller id); None
    when there are no consumers."""
    ids = sorted(consumer_ids)
    if not ids:
        return None
    # max keeps the first of equal weights: the smaller id.
    return max(ids, key=lambda c: weight(c, slot))


def group_owner(group: str, consumer_ids: Iterable[str]) -> str | None:
    """The consumer that owns a FIFO group: its slot's owner."""
    return owner(slot_of(group), consumer_ids)


class Assignment:
    """The owner of every slot for one set of consumers."""

    def __init__(self, consumers: frozenset[str], owners: list[str | None], tops: list[int]) -> None:
        self.consumers = consumers
        self.owners = owners  # per slot, its owner's id
        self.tops = tops  # per slot, the owner's weight
        self._slots: dict[str, list[int]] = {}

    @classmethod
    def compute(cls, consumers: frozenset[str]) -> Assignment:
        """From scratch: every consumer's weights, the best of each slot."""
        ids = sorted(consumers)
        if not ids:
            return cls(consumers, [None] * SLOTS, [0] * SLOTS)
        vectors = [weights(c) for c in ids]
        owners: list[str | None] = []
        tops: list[int] = []
        for column in zip(*vectors, strict=True):
            top = max(column)
            # index finds the first of equal weights: the smaller id.
            owners.append(ids[column.index(top)])
            tops.append(top)
        return cls(consumers, owners, tops)

    def derive(self, consumers: frozenset[str]) -> Assignment:
        """The assignment for ``consumers`` from this one: a consumer gone
        hands each of its slots to the slot's runner-up, one joined takes
        the slots it wins. Nothing else moves."""
        owners, tops = list(self.owners), list(self.tops)
        gone = self.consumers - consumers
        if gone:
            remaining = sorted(self.consumers & consumers)
            for s, o in enumerate(owners):
                if o in gone:
                    best = max(remaining, key=lambda c: weight(c, s)) if remaining else None
                    owners[s], tops[s] = best, (weight(best, s) if best is not None else 0)
        for c in sorted(consumers - self.consumers):
            for s, w in enumerate(weights(c)):
                o = owners[s]
                if o is None or w > tops[s] or (w == tops[s] and c < o):
                    owners[s], tops[s] = c, w
        return Assignment(consumers, owners, tops)

    def slots(self, consumer_id: str) -> list[int]:
        """The slots ``consumer_id`` owns, in order."""
        found = self._slots.get(consumer_id)
        if found is None:
            found = self._slots[consumer_id] = [s for s, o in enumerate(self.owners) if o == consumer_id]
        return found


_assignments: OrderedDict[frozenset[str], Assignment] = OrderedDict()
_lock = threading.Lock()


def assignment(consumer_ids: Iterable[str]) -> Assignment:
    """The slots' owners among these consumers: kept per set of consumers,
    each new set derived from the closest set kept when few consumers
    changed, else computed."""
    consumers = frozenset(consumer_ids)
    with _lock:
        found = _assignments.get(consumers)
        if found is not None:
            _assignments.move_to_end(consumers)
            return found
        closest = min(_assignments.values(), key=lambda a: len(a.consumers ^ consumers), default=None)
    if closest is not None and len(closest.consumers ^ consumers) <= MAX_CHANGES_DERIVED:
        made = closest.derive(consumers)
    else:
        made = Assignment.compute(consumers)
    with _lock:
        _assignments[consumers] = made
        while len(_assignments) > ASSIGNMENTS_KEPT:
            _assignments.popitem(last=False)
    return made


def owned_slots(consumer_id: str, live: Sequence[str]) -> list[int] | None:
    """The slots ``consumer_id`` owns among the ``live`` consumers of a
    queue, with UNGROUPED (messages without a group are everyone's); None
    when it is the only one: it owns them all. The receiver counts as live
    for its own claim even if it did not register for the queue."""
    others = set(live) - {consumer_id}
    if not others:
        return None
    return [UNGROUPED, *assignment(others | {consumer_id}).slots(consumer_id)]


def live_consumers(queue_name: str) -> list[str]:
    """Ids of the consumers registered for ``queue_name`` that are not gone
    (dead or left), in order. A suspect consumer keeps its slots: it may
    only be slow."""
    with connection.cursor() as cur:
        cur.execute(*dialect().queue_consumers(queue_name))
        return [cid for (cid,) in cur.fetchall()]
