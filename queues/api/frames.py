"""The frames of the websocket streams (``stream.py``): what each side
sends, how a frame is parsed and checked, and the error frame.

``ws://host/api/v1/queues/{name}/consume?prefetch=10`` with
``Authorization: Bearer <token>`` (a token that may consume the queue).
Query parameters, all optional: ``prefetch`` (1-1000, default 10: how many
unacked messages the stream may hold), ``visibility_timeout`` (s, default
the queue's) and ``consumer`` (a registered consumer's id).

Client -> server frames (JSON text):

- ``{"type": "ack", "receipts": [...]}``
- ``{"type": "nack", "receipts": [...], "delay": s, "reason": "..."}``
- ``{"type": "extend", "receipts": [...], "visibility_timeout": s}``

Server -> client frames:

- ``{"type": "ready", "queue": ..., "prefetch": ..., "visibility_timeout": ...,
  "consumer": ...}`` first, once the stream is open (a refused one gets an
  error frame instead, below);
- ``{"type": "messages", "messages": [...]}``: deliveries, shaped as a
  receive's; with ``acked`` and ``stale`` when acks went in the same round;
- ``{"type": "nacked", "nacked": [...], "stale": [...]}`` and
  ``{"type": "extended", "extended": [...], "stale": [...], "lease_expires_at": ...}``;
- ``{"type": "error", "status": 422, "error": {"code", "message"}}``: the
  contract's error, with the status an HTTP call would have had.
  A bad frame is answered so and the stream goes on; a refused stream (bad
  token, unknown queue...) gets it, then closes with 4000 + the HTTP status.

``ws://host/api/v1/queues/{name}/publish`` (a token that may produce to
the queue) is the producer's side: after its ``ready`` frame, the client sends
``{"type": "send", "id": ..., "messages": [...]}`` (the HTTP send's batch;
``id`` is the client's, any string or number, echoed back) without waiting,
and each frame is answered in order, after its commit, by
``{"type": "sent", "id": ..., "messages": [{"id", "duplicate"}]}`` or an
error frame with that ``id``. Each frame is all or nothing, as a send.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

import orjson
import psycopg
from django.db import DatabaseError, InterfaceError, OperationalError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from .. import broker
from ..exceptions import BadRequest, MQError, Unavailable
from . import schemas as s
from .errors import invalid

# Unacked messages a stream may hold; a look claims at most broker.MAX_RECEIVE.
MAX_PREFETCH = 1000

class ConsumeIn(BaseModel):
    """A consume stream's query string (text, so not strict)."""

    model_config = ConfigDict(extra="forbid")
    prefetch: int = Field(10, ge=1, le=MAX_PREFETCH)
    visibility_timeout: int | None = Field(None, ge=0, le=s.MAX_SECONDS)
    consumer: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,40}$")


class PublishIn(BaseModel):
    """A publish stream takes no parameters."""

    model_config = ConfigDict(extra="forbid")


class AckFrame(s.AckIn):
    type: Literal["ack"]


class NackFrame(s.NackIn):
    type: Literal["nack"]


class ExtendFrame(s.ExtendIn):
    type: Literal["extend"]


FrameId = str | int | None


class SendFrame(s.BatchIn):
    type: Literal["send"]
    id: Annotated[str, Field(max_length=200)] | int | None = None


CONSUME_FRAMES: dict[str, TypeAdapter[Any]] = {
    "ack": TypeAdapter(AckFrame),
    "nack": TypeAdapter(NackFrame),
    "extend": TypeAdapter(ExtendFrame),
}
SEND_FRAME: TypeAdapter[SendFrame] = TypeAdapter(SendFrame)


def _decoded(data: str | bytes, kinds: Collection[str]) -> dict[str, Any]:
    """A frame's JSON object, whose ``type`` is one of ``kinds``."""
    try:
        content = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("A frame must be JSON.") from None
    if not isinstance(content, dict) or content.get("type") not in kinds:
        names = [f'"{k}"' for k in kinds]
        wanted = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise BadRequest(f'A frame is a JSON object whose "type" is {wanted}.')
    return content


def _validated[T](adapter: TypeAdapter[T], content: dict[str, Any]) -> T:
    try:
        return adapter.validate_python(content)
    except PydanticValidationError as exc:
        raise invalid(exc.errors()) from None


def parse_frame(data: str | bytes) -> AckFrame | NackFrame | ExtendFrame:
    """A consumer's frame, validated as the matching HTTP call's body;
    raises the contract's error (400 for the wrong shape, 422 for a bad
    value)."""
    content = _decoded(data, CONSUME_FRAMES)
    frame: AckFrame | NackFrame | ExtendFrame = _validated(CONSUME_FRAMES[content["type"]], content)
    broker.parse_receipts(frame.receipts)  # InvalidValue for a malformed one, before anything is applied
    return frame


def parse_send(data: str | bytes) -> SendFrame:
    """A producer's frame, validated as the HTTP send's batch."""
    return _validated(SEND_FRAME, _decoded(data, ("send",)))


def frame_id(data: str | bytes) -> FrameId:
    """The ``id`` of a frame that could not be parsed, if it has a usable one."""
    try:
        content = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    value = content.get("id") if isinstance(content, dict) else None
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) <= 200 else None


def error_frame(exc: MQError, id: FrameId = None) -> dict[str, Any]:
    """The contract's error, with the HTTP status the same call would have
    had (a frame has no status line), and the ``id`` of the frame it answers."""
    frame: dict[str, Any] = {"type": "error", "status": exc.status, "error": {"code": exc.code, "message": exc.message, **exc.extra}}
    if id is not None:
        frame["id"] = id
    return frame


def as_mq_error(exc: Exception) -> MQError | None:
    """The contract's error for what a stream's database work raised (None:
    a bug, logged and closed with 1011)."""
    if isinstance(exc, MQError):
        return exc
    if isinstance(exc, (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)) or type(exc).__name__ == "PoolTimeout":
        return Unavailable()
    if isinstance(exc, (DatabaseError, psycopg.DatabaseError)):
        return Unavailable("The database refused the operation; retry shortly.")
    return None
