"""The errors the client raises for the server's error answers, over HTTP
and on streams alike."""

from __future__ import annotations


class MQError(Exception):
    """The server answered with an error (``{"error": {"code", "message"}}``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class ConsumerDead(MQError):
    """The monitor declared this consumer dead (410): its leases were given to
    others; register again."""


class ConsumerNotFound(MQError):
    """The server does not know this consumer id (404)."""


def error_for(status: int, code: str, message: str) -> MQError:
    """The error to raise for an error answer: a consumer's own errors as
    their classes, any other as ``MQError``."""
    cls = ConsumerNotFound if code == "consumer_not_found" else {410: ConsumerDead}.get(status, MQError)
    return cls(status, code, message)
