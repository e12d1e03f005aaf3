"""Waiting receives: wake-ups, timeouts, and the hand-off of a send's new
messages to a receive waiting in the same process (notify.take/hand)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from queues import notify

from .workers import wait_for


@pytest.fixture(autouse=True)
def no_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    # The LISTEN connection is PostgreSQL's business, not these tests'.
    monkeypatch.setattr(notify, "_ensure_watch", lambda loop: None)


def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run fn as a sender does: on another thread."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join(5)
    return out[0] if out else None


def test_a_timeout_ends_a_wait_with_false_and_a_wake_with_true() -> None:
    async def main() -> tuple:
        with notify.waiter(1) as w:
            timed_out = await w.wait(0.05)
        with notify.waiter(1) as w:
            asyncio.get_running_loop().call_later(0.05, notify.wake, [1])
            woken = await w.wait(5)
        return timed_out, woken

    assert asyncio.run(main()) == (False, True)


def test_only_a_waiting_receive_with_an_offer_is_taken_and_only_as_many_as_needed() -> None:
    async def main() -> list:
        with notify.waiter(7) as plain, notify.waiter(7, notify.Offer(2)) as a, notify.waiter(7, notify.Offer(2)) as b:
            assert in_thread(notify.take, 7, 5) == []  # nobody waits yet: they are looking
            waits = [asyncio.ensure_future(w.wait(5)) for w in (plain, a, b)]
            await asyncio.sleep(0)
            taken = in_thread(notify.take, 7, 3)  # 3 messages: a takes 2, b the third
            assert taken == [a, b]
            assert in_thread(notify.take, 7, 3) == []  # taken once
            notify.wake([7])  # the plain waiter wakes; the taken ones wait for their send
            await asyncio.sleep(0.01)
            assert waits[0].done() and not waits[1].done() and not waits[2].done()
            in_thread(notify.hand, a, ["m1", "m2"])
            in_thread(notify.hand, b, True)  # its send failed: it looks for itself
            return [await t for t in waits]

    assert asyncio.run(main()) == [True, ["m1", "m2"], True]


def test_a_taken_receive_outwaits_its_timeout_for_what_it_was_handed() -> None:
    async def main() -> object:
        with notify.waiter(3, notify.Offer(1)) as w:
            wait = asyncio.ensure_future(w.wait(0.05))
            await asyncio.sleep(0)
            assert in_thread(notify.take, 3, 1) == [w]
            await asyncio.sleep(0.2)  # past the timeout: still waiting for its send
            assert not wait.done()
            in_thread(notify.hand, w, ["m"])
            return await wait

    assert asyncio.run(main()) == ["m"]


@pytest.mark.django_db(transaction=True)
def test_messages_handed_to_a_receive_that_went_away_are_ready_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The receive's client hangs up after a send took it and before the send
    # could hand it its message: the message is ready again at once (not in
    # an hour, at its visibility timeout), as if never delivered.
    from queues import broker
    from queues.models import Message

    queue, _ = broker.put_queue("jobs", {"visibility_timeout": 3600})
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    waiting: dict = {}

    async def receive() -> object:
        # As every receive registers (broker.long_poll).
        with notify.waiter(queue.id, notify.Offer(1), on_unanswered=broker.release_unanswered_now) as w:
            waiting["w"] = w
            return await w.wait(30)

    pending = asyncio.run_coroutine_threadsafe(receive(), loop)
    wait_for(lambda: waiting.get("w") and waiting["w"].armed, timeout=5, interval=0.01)
    take = notify.take

    def take_then_hang_up(queue_id: int, messages: int) -> list:
        taken = take(queue_id, messages)
        pending.cancel()  # the client goes away
        while not waiting["w"].future.done():
            time.sleep(0.01)
        return taken

    monkeypatch.setattr(notify, "take", take_then_hang_up)
    try:
        (sent,) = broker.publish(queue, [broker.NewMessage(body=b'"lost?"')])
        wait_for(lambda: Message.objects.get(pk=sent.id).state == "ready", timeout=5, interval=0.02)
    finally:
        loop.call_soon_threadsafe(loop.stop)
    message = Message.objects.get(pk=sent.id)
    assert (message.state, message.delivery_count, message.lease_token, message.consumer_id) == ("ready", 0, None, None)
    counts = broker.queue_counts()[queue.id]
    assert (counts.ready, counts.in_flight) == (1, 0)
    (again,) = broker.receive(queue)
    assert again.delivery_count == 1


def test_k_messages_wake_about_k_waiting_receives_oldest_first_not_all() -> None:
    # A thousand consumers long-polling one queue: a send of 3 messages must
    # not wake all thousand (each would run a claim, and the sends after it
    # would wait behind them).
    async def main() -> tuple[list[bool], list[bool], list[bool]]:
        from contextlib import ExitStack

        with ExitStack() as stack:
            waiters = [stack.enter_context(notify.waiter(7, interchangeable=True)) for _ in range(10)]
            waits = [asyncio.ensure_future(w.wait(5)) for w in waiters]
            await asyncio.sleep(0)
            notify.wake({7: 3})
            await asyncio.sleep(0.01)
            after_three = [t.done() for t in waits]
            notify.wake({7: None})  # a resumed queue: everyone looks again
            await asyncio.sleep(0.01)
            after_all = [t.done() for t in waits]
        with ExitStack() as stack:
            # A FIFO queue's groups belong to their consumers: all look.
            fifo = [stack.enter_context(notify.waiter(8, interchangeable=False)) for _ in range(4)]
            fifo_waits = [asyncio.ensure_future(w.wait(5)) for w in fifo]
            await asyncio.sleep(0)
            notify.wake({8: 1})
            await asyncio.sleep(0.01)
            fifo_done = [t.done() for t in fifo_waits]
        return after_three, after_all, fifo_done

    after_three, after_all, fifo_done = asyncio.run(main())
    assert after_three == [True] * 3 + [False] * 7
    assert after_all == [True] * 10
    assert fifo_done == [True] * 4


def test_a_notification_names_how_many_messages_became_ready() -> None:
    assert notify.parse_payload("12:5,13") == {12: 5, 13: None}
    assert notify.parse_payload("4") == {4: None}
    with pytest.raises(ValueError):
        notify.parse_payload("x:1")
