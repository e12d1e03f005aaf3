"""The process's one watch over waited-on queues (``notify._watch_forever``):
idle long polls make no claims of their own, and what becomes claimable
without a wake-up (a delayed message coming due) wakes about as many
waiting receives as there are messages, not all of them."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from queues import broker, notify
from queues.broker import waiting
from queues.exceptions import QueueNotFound

from .helpers import make_queue

pytestmark = pytest.mark.django_db(transaction=True)


def test_idle_long_polls_wait_without_claiming_and_a_message_coming_due_wakes_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "RECHECK_SECONDS", 0.3)
    queue = make_queue("herd")
    looks = 0

    async def main() -> list[list[broker.Delivery]]:
        async def poll() -> list[broker.Delivery]:
            inner = waiting.thread_looks(None, max_messages=1, visibility_timeout=None, consumer_id=None)

            async def counted(q: broker.Queue, n: int) -> broker.Received:
                nonlocal looks
                looks += 1
                return await inner(q, n)

            got = await broker.long_poll(queue, counted, offer=None, wait=3.0)
            return got.deliveries

        polls = [asyncio.ensure_future(poll()) for _ in range(6)]
        await asyncio.sleep(1.0)
        # What /metrics shows as mq_waiting_receives: the six, in their wait.
        assert notify.waiting() == {queue.id: 6}
        # Not ready when sent, so no wake-up is sent with it: only the
        # watch's count can find it once it is due.
        await sync_to_async(lambda: broker.publish(broker.get_queue("herd"), [broker.NewMessage(body=b'"late"', delay=1)]))()
        return await asyncio.gather(*polls)

    started = time.monotonic()
    results = asyncio.run(main())
    got = [d for r in results for d in r]
    assert [d.body for d in got] == ['"late"']
    # Six looks before waiting; then one per receive the watch woke, for one
    # message: at most a few, where each receive looked every second before
    # (18 or more in these 3 s).
    assert 6 < looks <= 9, looks
    assert time.monotonic() - started < 4.5


def test_a_queue_deleted_under_a_long_poll_ends_it_at_once() -> None:
    make_queue("doomed")

    async def main() -> float:
        queue = await broker.aget_queue("doomed")
        look = waiting.thread_looks(None, max_messages=1, visibility_timeout=None, consumer_id=None)
        poll = asyncio.ensure_future(broker.long_poll(queue, look, offer=None, wait=10.0))
        await asyncio.sleep(0.5)
        start = time.monotonic()
        await sync_to_async(lambda: broker.delete_queue(broker.get_queue("doomed")))()
        with pytest.raises(QueueNotFound):
            await poll
        return time.monotonic() - start

    assert asyncio.run(main()) < 2.0
