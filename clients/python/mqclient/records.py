"""What the server hands the client, as objects: a leased ``Message`` and a
consumer's ``Registration``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """A leased message. ``receipt`` acks, nacks or extends this delivery."""

    queue: str
    id: str
    body: Any
    receipt: str
    delivery_count: int
    priority: int = 0
    group: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    enqueued_at: str | None = None
    lease_expires_at: str | None = None

    @classmethod
    def from_api(cls, queue: str, data: dict[str, Any]) -> Message:
        return cls(
            queue=queue,
            id=data["id"],
            body=data["body"],
            receipt=data["receipt"],
            delivery_count=data["delivery_count"],
            priority=data.get("priority", 0),
            group=data.get("group"),
            headers=data.get("headers") or {},
            enqueued_at=data.get("enqueued_at"),
            lease_expires_at=data.get("lease_expires_at"),
        )


@dataclass
class Registration:
    id: str
    heartbeat_interval: float
    heartbeat_timeout: int
