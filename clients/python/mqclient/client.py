"""A thin, thread-safe client for the mqadmin JSON API (standard library only).

Each thread keeps its own keep-alive HTTP connection, so a ``Client`` may be
shared by a worker's threads without locks around requests.
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .errors import error_for
from .records import Message, Registration
from .stream import Publisher, Stream

API_PREFIX = "/api/v1"
# Seconds added to a long poll's wait before the socket gives up on it.
LONG_POLL_SLACK_SECONDS = 10.0


class Client:
    """``Client("http://127.0.0.1:8000", "<key id>.<secret>")``."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host[:port], not {url!r}")
        self.url = url
        self.token = token
        self.timeout = timeout
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        path = parts.path.rstrip("/")
        self._prefix = path if path.endswith(API_PREFIX) else path + API_PREFIX
        self._local = threading.local()

    def clone(self) -> Client:
        """A client for the same server with connections of its own."""
        return Client(self.url, self.token, timeout=self.timeout)

    # -- transport -----------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Call the API; returns the decoded JSON (None for an empty body).
        Raises MQError (or a subclass) for an error answer, OSError when the
        server cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        wait = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            conn = self._connection(wait)
            reused = conn.sock is not None
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                # A kept-alive connection the server closed while idle: the
                # request never reached it, so one retry on a fresh one is safe.
                if not reused or attempt == 2:
                    raise
            except BaseException:
                self.close()
                raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        payload = json.loads(raw) if raw else None
        if response.status >= 400:
            error = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
            code = error.get("code", "http_error")
            message = error.get("message", raw[:200].decode(errors="replace"))
            raise error_for(response.status, code, message)
        return payload

    # -- queues --------------------------------------------------------------

    def put_queue(self, name: str, **config: Any) -> dict[str, Any]:
        """Create or update a queue (admin scope)."""
        return self.request("PUT", f"/queues/{quote(name)}", config)

    def get_queue(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/queues/{quote(name)}")

    def delete_queue(self, name: str) -> None:
        self.request("DELETE", f"/queues/{quote(name)}")

    def purge(self, name: str) -> int:
        return int(self.request("POST", f"/queues/{quote(name)}/purge")["purged"])

    # -- messages ------------------------------------------------------------

    def send(
        self,
        queue: str,
        body: Any,
        *,
        priority: int = 0,
        delay: int | None = None,
        group: str | None = None,
        dedup_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Send one message; returns its id."""
        message: dict[str, Any] = {"body": body, "priority": priority}
        for key, value in (("delay", delay), ("group", group), ("dedup_id", dedup_id), ("headers", headers)):
            if value is not None:
                message[key] = value
        return str(self.send_batch(queue, [message])[0]["id"])

    def send_batch(self, queue: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send up to 1000 messages (each a dict with ``body`` and optionally
        ``priority``, ``delay``, ``group``, ``dedup_id``, ``headers``), all or
        nothing. Returns ``[{"id", "duplicate"}]`` in input order."""
        return list(self.request("POST", f"/queues/{quote(queue)}/messages", {"messages": messages})["messages"])

    def receive(
        self,
        queue: str,
        *,
        max: int = 1,
        wait: float = 0,
        visibility_timeout: int | None = None,
        consumer: str | None = None,
    ) -> list[Message]:
        """Lease up to ``max`` messages, long-polling up to ``wait`` seconds."""
        body: dict[str, Any] = {"max": max, "wait": wait}
        if visibility_timeout is not None:
            body["visibility_timeout"] = visibility_timeout
        if consumer is not None:
            body["consumer"] = consumer
        data = self.request("POST", f"/queues/{quote(queue)}/receive", body, timeout=max_timeout(self.timeout, wait))
        return [Message.from_api(queue, m) for m in data["messages"]]

    def ack_and_receive(
        self,
        queue: str,
        receipts: list[str],
        *,
        max: int = 1,
        wait: float = 0,
        visibility_timeout: int | None = None,
        consumer: str | None = None,
    ) -> tuple[dict[str, list[str]], list[Message]]:
        """Acknowledge ``receipts`` and lease the next messages in one call
        (half the requests of ``ack`` then ``receive``). Returns
        ``({"acked": [ids], "stale": [receipts]}, messages)``."""
        body: dict[str, Any] = {"max": max, "wait": wait, "ack": receipts}
        if visibility_timeout is not None:
            body["visibility_timeout"] = visibility_timeout
        if consumer is not None:
            body["consumer"] = consumer
        data = self.request("POST", f"/queues/{quote(queue)}/receive", body, timeout=max_timeout(self.timeout, wait))
        acked = {"acked": data["acked"], "stale": data["stale"]}
        return acked, [Message.from_api(queue, m) for m in data["messages"]]

    def ack(self, queue: str, receipts: list[str]) -> dict[str, list[str]]:
        """``{"acked": [ids], "stale": [receipts]}``."""
        return self.request("POST", f"/queues/{quote(queue)}/ack", {"receipts": receipts})

    def nack(self, queue: str, receipts: list[str], *, delay: int = 0, reason: str = "") -> dict[str, list[str]]:
        """Give messages back as failed deliveries, ready again after ``delay`` s."""
        return self.request(
            "POST", f"/queues/{quote(queue)}/nack", {"receipts": receipts, "delay": delay, "reason": reason[:2000]}
        )

    def extend(self, queue: str, receipts: list[str], visibility_timeout: int) -> dict[str, Any]:
        """Push the leases to now + ``visibility_timeout``."""
        return self.request(
            "POST", f"/queues/{quote(queue)}/extend", {"receipts": receipts, "visibility_timeout": visibility_timeout}
        )

    def consume(
        self, queue: str, *, prefetch: int = 10, visibility_timeout: int | None = None, consumer: str | None = None
    ) -> Stream:
        """A websocket on which the server pushes ``queue``'s messages as they
        come, holding at most ``prefetch`` unacked (``mqclient.stream``)."""
        return Stream(self, queue, prefetch=prefetch, visibility_timeout=visibility_timeout, consumer=consumer)

    def publisher(self, queue: str, *, window: int = 8) -> Publisher:
        """A websocket on which batches go out without waiting for each
        answer, at most ``window`` unanswered (``mqclient.stream``)."""
        return Publisher(self, queue, window=window)

    def websocket_url(self, queue: str, kind: str, params: dict[str, Any]) -> str:
        """The URL of a ``kind`` stream (consume, publish) on ``queue``."""
        scheme = "wss" if self._scheme == "https" else "ws"
        port = f":{self._port}" if self._port else ""
        host = f"[{self._host}]" if ":" in self._host else self._host
        query = f"?{urlencode(params)}" if params else ""
        return f"{scheme}://{host}{port}{self._prefix}/queues/{quote(queue)}/{kind}{query}"

    # -- consumers -----------------------------------------------------------

    def register(
        self,
        name: str,
        queues: list[str],
        *,
        meta: dict[str, Any] | None = None,
        heartbeat_timeout: int | None = None,
    ) -> Registration:
        body: dict[str, Any] = {"name": name, "queues": queues, "meta": meta or {}}
        if heartbeat_timeout is not None:
            body["heartbeat_timeout"] = heartbeat_timeout
        data = self.request("POST", "/consumers", body)
        return Registration(data["id"], float(data["heartbeat_interval"]), int(data["heartbeat_timeout"]))

    def heartbeat(self, consumer_id: str) -> dict[str, Any]:
        """Raises ConsumerDead once the monitor declared the consumer dead."""
        return self.request("POST", f"/consumers/{quote(consumer_id)}/heartbeat")

    def leave(self, consumer_id: str) -> int:
        """Graceful leave; returns how many leases the server released."""
        return int(self.request("DELETE", f"/consumers/{quote(consumer_id)}")["released"])

    def consumers(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/consumers")["consumers"])


def max_timeout(timeout: float, wait: float) -> float:
    return max(timeout, wait + LONG_POLL_SLACK_SECONDS)
