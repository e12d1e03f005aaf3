"""Receipts: what a consumer does with what it was leased. Ack (delete),
nack (back as a failed delivery, or dead-lettered), extend the lease, or
give it back without a verdict (release).

A receipt is ``<message id>.<lease token>``. Every lease writes a new token,
so a receipt whose lease moved on (it expired and the message was leased
again, an operator requeued it, it was already acked) matches nothing: a
stale receipt changes nothing.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from django.db import connection

from .. import events
from ..backends import PostgreSQL, dialect, prepared_cursor
from ..backends.common import LEASED
from ..exceptions import InvalidValue
from ..models import Queue
from ..states import MessageState as S
from .counters import STATE_COUNTER, Tally
from .durability import async_commit_here, atomic
from .queues import hold_queues

_RECEIPT = re.compile(r"(\d{1,18})\.([0-9a-f]{32})")


@dataclass
class ReceiptResult:
    done: list[str] = field(default_factory=list)  # message ids
    stale: list[str] = field(default_factory=list)  # receipts


class Leased(NamedTuple):
    """A leased message, locked, as a release or a dead-letter needs it
    (``backends.common.LEASED``)."""

    id: int
    queue_id: int
    delivery_count: int
    consumer_id: str | None
    origin_queue_id: int | None


def parse_receipts(receipts: Sequence[str]) -> list[tuple[int, str, str]]:
    """(message id, lease token, receipt) per receipt; raises InvalidValue."""
    parsed = []
    for receipt in receipts:
        match = _RECEIPT.fullmatch(receipt)
        if match is None:
            raise InvalidValue(f"{receipt[:80]!r} is not a receipt (expected <message id>.<32 hex digits>).")
        parsed.append((int(match[1]), match[2], receipt))
    return parsed


def match_receipts(parsed: list[tuple[int, str, str]], found: Iterable[tuple[int, str]]) -> ReceiptResult:
    """The verdict per receipt: done when its (id, token) was ``found`` (once
    per message), stale otherwise."""
    found_set = set(found)
    result = ReceiptResult()
    done: set[int] = set()
    for mid, token, receipt in parsed:
        if (mid, token) in found_set and mid not in done:
            result.done.append(str(mid))
            done.add(mid)
        else:
            result.stale.append(receipt)
    return result


def _pairs(parsed: list[tuple[int, str, str]]) -> list[tuple[int, str]]:
    return sorted({(mid, token) for mid, token, _ in parsed})


def ack(queue: Queue, receipts: Sequence[str]) -> ReceiptResult:
    """Delete the messages whose receipts are current. A receipt is stale when
    its lease was fenced by a newer delivery, a requeue or an earlier ack; a
    stale ack changes nothing."""
    parsed = parse_receipts(receipts)
    sql = dialect()
    if isinstance(sql, PostgreSQL):
        # One statement with its counter deltas: atomic on its own.
        with prepared_cursor() as cur:
            cur.execute(*sql.ack(queue.id, _pairs(parsed), async_commit=async_commit_here()))
            return match_receipts(parsed, cur.fetchall())
    with atomic():
        with connection.cursor() as cur:
            cur.execute(*sql.ack_delete(queue.id, _pairs(parsed)))
            rows = cur.fetchall()
        tally = Tally()
        for _mid, _tok, state, origin in rows:
            tally.move(queue.id, state, None)
            if origin is not None:
                tally.add(origin, "dead_out", -1)
        tally.add(queue.id, "acked_total", len(rows))
        tally.save()
    return match_receipts(parsed, [(r[0], r[1]) for r in rows])


def extend(queue: Queue, receipts: Sequence[str], visibility_timeout: int, *, now: float | None = None) -> tuple[ReceiptResult, float]:
    """Push the leases of current receipts to now + ``visibility_timeout``.
    Returns the verdicts and the new expiry."""
    parsed = parse_receipts(receipts)
    now = time.time() if now is None else now
    expires = now + visibility_timeout
    with connection.cursor() as cur:
        cur.execute(*dialect().extend(queue.id, _pairs(parsed), expires, async_commit=async_commit_here()))
        found = cur.fetchall()
    return match_receipts(parsed, found), expires


def nack(queue: Queue, receipts: Sequence[str], *, delay: int = 0, reason: str = "", now: float | None = None) -> ReceiptResult:
    """Give messages back as failed deliveries: ready again after ``delay``, or
    dead-lettered once they reached the queue's ``max_deliveries``."""
    parsed = parse_receipts(receipts)
    now = time.time() if now is None else now
    with atomic():
        rows, found = _in_flight(queue.id, parsed)
        tally = Tally()
        _release(queue, rows, tally, now=now, delay=delay, reason=reason, redelivery=False)
        tally.add(queue.id, "nacked_total", len(rows))
        tally.save()
    return match_receipts(parsed, found)


def release(queue: Queue, receipts: Sequence[str], *, reason: str, now: float | None = None) -> int:
    """Leases given back without a verdict (a stream closed while its
    consumer held them): ready again at once, each a redelivery, as when a
    consumer leaves. A receipt that is stale changes nothing. Returns how
    many went back."""
    parsed = parse_receipts(receipts)
    if not parsed:
        return 0
    now = time.time() if now is None else now
    with atomic():
        return release_rows(_in_flight(queue.id, parsed)[0], now=now, reason=reason)


def _in_flight(queue_id: int, parsed: list[tuple[int, str, str]]) -> tuple[list[Leased], list[tuple[int, str]]]:
    """The in-flight messages the receipts hold, locked (in the caller's
    transaction), and the (id, lease token) of each."""
    with connection.cursor() as cur:
        cur.execute(*dialect().receipt_rows(queue_id, _pairs(parsed), "'in_flight'", columns=f"{LEASED}, lease_token"))
        rows = cur.fetchall()
    return [Leased._make(r[:-1]) for r in rows], [(r[0], r[-1]) for r in rows]


def release_lapsed(now: float, *, limit: int, queue_id: int | None = None) -> int:
    """Messages (of one queue, or all) whose lease ran out by ``now`` back to
    ready, each a redelivery, or dead-lettered when they used up their
    deliveries (``release_rows``); at most ``limit``, longest lapsed first.
    Returns how many. In the caller's transaction. The monitor's sweep and
    a receive of the queue both come here: SKIP LOCKED (``expired_leases``)
    keeps them, and a late ack or extend, from both acting on one expiry."""
    with connection.cursor() as cur:
        cur.execute(*dialect().expired_leases(now, limit, queue_id))
        rows = [Leased._make(r) for r in cur.fetchall()]
    return release_rows(rows, now=now, reason="lease expired")


def release_rows(rows: Sequence[Leased], *, now: float, reason: str) -> int:
    """In-flight rows, locked by the caller, back to ready as redeliveries
    (or dead-lettered when they used up their deliveries). Returns how many."""
    if not rows:
        return 0
    by_queue: dict[int, list[Leased]] = defaultdict(list)
    for r in rows:
        by_queue[r.queue_id].append(r)
    queues = Queue.objects.select_related("dead_letter_queue").in_bulk(list(by_queue))
    tally = Tally()
    for qid, items in by_queue.items():
        _release(queues[qid], items, tally, now=now, reason=reason, redelivery=True)
    tally.save()
    return len(rows)


def _release(
    queue: Queue, rows: Sequence[Leased], tally: Tally, *, now: float, delay: int = 0, reason: str = "", redelivery: bool
) -> None:
    """Return locked in-flight rows to ready (or delayed), dead-lettering
    those that used up their deliveries. The lease token is cleared: the old
    holder's receipt is stale from now. ``redelivery``: the lease was lost
    (expired, its consumer gone), not given back by a nack."""
    if not rows:
        return
    limit = queue.max_deliveries
    spent = [r for r in rows if limit and r.delivery_count >= limit]
    retry = [r for r in rows if not (limit and r.delivery_count >= limit)]
    if retry:
        target = S.DELAYED if delay > 0 else S.READY
        with connection.cursor() as cur:
            cur.execute(*dialect().unlease([r.id for r in retry], state=target.value, visible_at=now + delay, reason=reason))
        tally.move(queue.id, S.IN_FLIGHT, target, len(retry))
        if redelivery:
            tally.add(queue.id, "redelivered_total", len(retry))
            for r in retry:
                events.emit("redelivery", queue.name, message=str(r.id), consumer=r.consumer_id, delivery_count=r.delivery_count, reason=reason)
    if spent:
        dead_letter(queue, spent, tally, now=now, reason=reason or f"delivered {limit} times without an ack")


def dead_letter(queue: Queue, rows: Sequence[Leased], tally: Tally, *, now: float, reason: str, source_state: S = S.IN_FLIGHT) -> None:
    """Move locked rows out of play: into the dead-letter queue as ready
    messages, or into state dead in place."""
    ids = [r.id for r in rows]
    dlq = queue.dead_letter_queue
    # The origin too: a queue deleted meanwhile nulls the origins it finds.
    if dlq is not None and dlq.id not in hold_queues([dlq.id, queue.id]):
        dlq = None
    sql = dialect()
    with connection.cursor() as cur:
        if dlq is not None:
            cur.execute(*sql.dead_letter_into(ids, dlq_id=dlq.id, origin_id=queue.id, now=now, reason=reason))
        else:
            cur.execute(*sql.dead_in_place(ids, now=now, reason=reason))
    tally.add(queue.id, STATE_COUNTER[source_state], -len(rows))
    tally.add(queue.id, "dead_lettered_total", len(rows))
    if dlq is not None:
        tally.move(dlq.id, None, S.READY, len(rows))
        # Counted once, against the queue it first died in.
        tally.add(queue.id, "dead_out", sum(1 for r in rows if r.origin_queue_id is None))
    else:
        tally.add(queue.id, "dead_state", len(rows))
    for r in rows:
        events.emit(
            "dead_letter",
            queue.name,
            message=str(r.id),
            dead_letter_queue=dlq.name if dlq else None,
            delivery_count=r.delivery_count,
            consumer=r.consumer_id,
            reason=reason,
        )
