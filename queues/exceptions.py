"""Domain errors. Each class's docstring is its default message; ``code`` and
``status`` are what the HTTP edge answers with (contract section 2)."""

from __future__ import annotations


class MQError(Exception):
    """The message queue could not do that."""

    code = "error"
    status = 400

    def __init__(self, message: str | None = None, **extra: object) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.extra = extra
        super().__init__(self.message)


class BadRequest(MQError):
    """The request body is not valid JSON of the expected shape."""

    code = "bad_request"
    status = 400


class InvalidValue(MQError):
    """A value in the request is not allowed."""

    code = "invalid_value"
    status = 422


class Unauthorized(MQError):
    """A valid API token is required: Authorization: Bearer <key id>.<secret>."""

    code = "unauthorized"
    status = 401


class Forbidden(MQError):
    """This token's scope or queue pattern does not allow this call."""

    code = "forbidden"
    status = 403


class QueueNotFound(MQError):
    """No queue with that name."""

    code = "queue_not_found"
    status = 404


class ConsumerNotFound(MQError):
    """No consumer with that id."""

    code = "consumer_not_found"
    status = 404


class NotFound(MQError):
    """Nothing here."""

    code = "not_found"
    status = 404


class QueueExists(MQError):
    """A queue with that name already exists."""

    code = "queue_exists"
    status = 409


class QueueInUse(MQError):
    """Other queues use this queue as their dead-letter queue."""

    code = "queue_in_use"
    status = 409


class StaleReceipt(MQError):
    """The receipt's lease expired and the message was leased again, or it was acked."""

    code = "stale_receipt"
    status = 409


class ConsumerDead(MQError):
    """This consumer was declared dead, or it left; register again."""

    code = "consumer_dead"
    status = 410


class MessageTooLarge(MQError):
    """The message body is larger than the queue's max_message_bytes."""

    code = "message_too_large"
    status = 413


class RequestTooLarge(MQError):
    """The request body is larger than this server accepts."""

    code = "request_too_large"
    status = 413


class QueueFull(MQError):
    """The queue holds its maximum number of waiting messages; retry later."""

    code = "queue_full"
    status = 429


class TooManyFailures(MQError):
    """Too many failed authentications from this address; retry later."""

    code = "too_many_failed_auth"
    status = 429


class Unavailable(MQError):
    """The database is unreachable; retry shortly."""

    code = "unavailable"
    status = 503
