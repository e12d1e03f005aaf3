"""Row 9 of ``mq bench``: a FIFO queue's receive with one registered consumer
and with a crowd of them, beside a standard queue's receive.

One consumer receives ``FIFO_MAX`` at a time over HTTP (and acks them in a
call of its own, not timed) from a FIFO queue of ``FIFO_GROUPS`` groups,
first as the queue's only registered consumer, then with ``FIFO_CROWD - 1``
more registered and idle (live, never receiving): a claim that costs more
per consumer shows here. The same receives from a standard queue are the
yardstick. Each cell is the median of the rounds' median receive, in ms.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from mqclient import Client

from queues import broker
from queues.models import Queue

from .measure import BODY_BYTES, FIFO_CROWD, FIFO_GROUPS, FIFO_KEYS, FIFO_MAX, PREFIX, Stat

if TYPE_CHECKING:
    from .runner import Runner

# Timed receives per case and round, at most (``fifo_receives``). Each group
# holds as many messages, so a consumer that owns a 200th of the groups
# never runs dry.
FIFO_RECEIVES = 40
# A registered consumer of the crowd stays live for the whole row.
IDLE_HEARTBEAT_TIMEOUT_S = 3600



def fifo_receive(bench: Runner) -> None:
    """The row's three cells, measured in turns each round."""
    bench.say(f"9. FIFO receive, {FIFO_GROUPS:,} groups, max {FIFO_MAX}, 1 and {FIFO_CROWD} consumers")
    fifo_queue, _ = broker.put_queue(PREFIX + "fifo", {"fifo": True, "visibility_timeout": 300, "max_deliveries": 0})
    standard_queue, _ = broker.put_queue(PREFIX + "fifo_std", {"visibility_timeout": 300, "max_deliveries": 0})
    samples: dict[str, list[float]] = {key: [] for key in FIFO_KEYS}
    firsts: dict[str, list[float]] = {key: [] for key in FIFO_KEYS}
    client = Client(bench.url, bench.token, timeout=60)
    try:
        for _ in range(bench.s.rounds):
            for key in FIFO_KEYS:
                queue = standard_queue if key == "fifo_standard" else fifo_queue
                crowd = FIFO_CROWD - 1 if key == "fifo" else 0
                first, median = _round(bench, client, queue, crowd, fifo_receives(bench))
                firsts[key].append(first)
                samples[key].append(median)
    finally:
        client.close()
        for queue in (fifo_queue, standard_queue):
            broker.purge(queue)
        Queue.objects.filter(pk__in=[fifo_queue.pk, standard_queue.pk]).delete()
    one, standard = (Stat(samples[key], unit="ms") for key in ("fifo_1", "fifo_standard"))
    bench.put("fifo_1", "mqadmin", one)
    bench.put("fifo_standard", "mqadmin", standard)
    note = (
        f"({FIFO_CROWD} consumers registered; with 1: {one.median:.1f} ms, a standard queue: {standard.median:.1f} ms; "
        f"the first receive after the {FIFO_CROWD} joined: {statistics.median(firsts['fifo']):.1f} ms)"
    )
    bench.put("fifo", "mqadmin", Stat(samples["fifo"], unit="ms", note=note))


def fifo_receives(bench: Runner) -> int:
    """Timed receives per case and round: FIFO_RECEIVES, fewer at the sizes
    of a smoke test (a fifth of a round's round trips)."""
    return max(2, min(FIFO_RECEIVES, bench.s.trips // 5))


def _round(bench: Runner, client: Client, queue: Queue, crowd: int, receives: int) -> tuple[float, float]:
    """Fill the queue, register the consumer (and ``crowd`` idle ones), time
    ``receives`` receives after a first: the first's ms, and the median of
    the others. Everyone leaves after."""
    broker.purge(queue)
    per_group = receives + 1
    # Interleaved, as customers' orders arrive: one of each group, then again.
    for _ in range(per_group):
        broker.publish(queue, [broker.NewMessage(body=BODY_BYTES, group=f"g{g}" if queue.fifo else None) for g in range(FIFO_GROUPS)])
    bench.vacuum()
    idle = [broker.register_consumer("bench-idle", [queue.name], {}, IDLE_HEARTBEAT_TIMEOUT_S).pk for _ in range(crowd)]
    me = broker.register_consumer("bench-fifo", [queue.name], {}, IDLE_HEARTBEAT_TIMEOUT_S).pk
    try:
        # The first receive after the membership changed is told apart: a
        # consumer makes it once, then receives for hours.
        t = time.perf_counter()
        got = client.receive(queue.name, max=FIFO_MAX, consumer=me)
        first = (time.perf_counter() - t) * 1000
        client.ack(queue.name, [m.receipt for m in got])
        times = []
        for _ in range(receives):
            t = time.perf_counter()
            got = client.receive(queue.name, max=FIFO_MAX, consumer=me)
            times.append((time.perf_counter() - t) * 1000)
            if not got:
                raise RuntimeError(f"{queue.name} ran dry for its consumer")
            client.ack(queue.name, [m.receipt for m in got])
        return first, statistics.median(times)
    finally:
        for cid in [me, *idle]:
            broker.leave(cid)
