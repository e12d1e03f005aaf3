"""The RabbitMQ peer, through pika: a durable queue, persistent messages.

Reported as skipped, with the reason, where pika or a RabbitMQ server is
missing."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from .measure import BODY, BODY_BYTES, Countdown, run_consumers, time_arrivals

RABBIT_QUEUE = "mqbench"

RABBIT_PARAMS: dict[str, Any] = {"host": "127.0.0.1", "port": 5672}


def _rabbit() -> Any:
    import pika

    params = pika.ConnectionParameters(
        **RABBIT_PARAMS, credentials=pika.PlainCredentials("guest", "guest"), connection_attempts=1, socket_timeout=3
    )
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(RABBIT_QUEUE, durable=True)
    return conn, ch


def rabbit_available() -> str | None:
    try:
        import pika  # noqa: F401
    except ImportError:
        return "pika not installed"
    try:
        conn, ch = _rabbit()
        ch.queue_purge(RABBIT_QUEUE)
        conn.close()
    except Exception as exc:
        return f"RabbitMQ unreachable at {RABBIT_PARAMS['host']}:{RABBIT_PARAMS['port']}: {type(exc).__name__}"
    return None


def rabbit_version() -> str | None:
    try:
        conn, _ = _rabbit()
        version = conn._impl.server_properties.get("version")
        conn.close()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:
        return None


def _persistent() -> Any:
    import pika

    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json")


def rabbit_publish(n: int, *, confirms: bool) -> float:
    """Publish ``n`` persistent messages; with confirms, each waits for its confirm."""
    conn, ch = _rabbit()
    try:
        if confirms:
            ch.confirm_delivery()
        props = _persistent()
        t = time.perf_counter()
        for _ in range(n):
            ch.basic_publish("", RABBIT_QUEUE, BODY_BYTES, props)
        # A synchronous call behind the publishes: they have been handled.
        ch.queue_declare(RABBIT_QUEUE, durable=True, passive=True)
        return n / (time.perf_counter() - t)
    finally:
        ch.queue_purge(RABBIT_QUEUE)
        conn.close()


def rabbit_fill(n: int) -> None:
    conn, ch = _rabbit()
    try:
        ch.queue_purge(RABBIT_QUEUE)
        props = _persistent()
        for _ in range(n):
            ch.basic_publish("", RABBIT_QUEUE, BODY_BYTES, props)
        for _ in range(100):
            if ch.queue_declare(RABBIT_QUEUE, durable=True, passive=True).method.message_count >= n:
                return
            time.sleep(0.05)
    finally:
        conn.close()


def rabbit_drain(consumers: int, total: int, *, prefetch: int, ack_every: int | None = None) -> float:
    """Consume with manual acks: one ack per ``ack_every`` messages
    (multiple=True; by default one per ``prefetch``)."""
    ack_every = ack_every or prefetch
    rabbit_fill(total)

    def work(countdown: Countdown) -> None:
        conn, ch = _rabbit()
        try:
            ch.basic_qos(prefetch_count=prefetch)
            pending = 0
            last = None
            for method, _props, _body in ch.consume(RABBIT_QUEUE, inactivity_timeout=0.05):
                if method is None:
                    if countdown.over:
                        break
                    continue
                pending += 1
                last = method.delivery_tag
                if pending >= ack_every:
                    ch.basic_ack(last, multiple=True)
                    countdown.done(pending)
                    pending = 0
                    if countdown.over:
                        break
            if pending and last is not None:
                ch.basic_ack(last, multiple=True)
                countdown.done(pending)
            ch.cancel()
        finally:
            conn.close()

    try:
        return run_consumers(consumers, total, work)
    finally:
        conn, ch = _rabbit()
        ch.queue_purge(RABBIT_QUEUE)
        conn.close()


def rabbit_latency(n: int) -> list[float]:
    got: dict[int, float] = {}
    arrived = threading.Event()
    stop = threading.Event()
    ready = threading.Event()

    def consumer() -> None:
        conn, ch = _rabbit()
        try:
            ch.basic_qos(prefetch_count=1)
            ready.set()
            for method, _props, body in ch.consume(RABBIT_QUEUE, inactivity_timeout=0.2):
                if method is not None:
                    got[orjson.loads(body)["i"]] = time.perf_counter()
                    arrived.set()
                    ch.basic_ack(method.delivery_tag)
                if stop.is_set():
                    break
            ch.cancel()
        finally:
            conn.close()

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    ready.wait(10)
    conn, ch = _rabbit()
    props = _persistent()
    try:
        samples = time_arrivals(n, lambda i: ch.basic_publish("", RABBIT_QUEUE, orjson.dumps(BODY | {"i": i}), props), arrived, got)
    finally:
        stop.set()
        conn.close()
        thread.join(10)
    return samples
