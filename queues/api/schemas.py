"""Request and response shapes of the JSON API. Validation, and the OpenAPI
document, come from these; views never check types by hand."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from ..models import QUEUE_NAME_PATTERN, QUEUE_NAME_RULE, QueueDict, is_queue_name

# Text that is stored as given must not hold NUL: PostgreSQL text cannot.
NO_NUL = r"^[^\x00]*$"
MAX_SECONDS = 12 * 3600  # longest lease or delay, as SQS
MAX_DELAY = 14 * 24 * 3600
# A message's limits (MessageIn, and ``plainly_valid``'s shortcut).
MAX_PRIORITY = 9
MAX_KEY_CHARS = 128  # a group, a dedup id, a header's name
MAX_HEADERS = 64
MAX_HEADER_VALUE_CHARS = 4096
MAX_BATCH = 1000
Receipts = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1, max_length=1000)]


def _queue_name(value: str) -> str:
    if not is_queue_name(value):
        raise ValueError(f"queue names are {QUEUE_NAME_RULE}")
    return value


# A queue's name, checked by the models' one rule (a 422 when it fails).
QueueName = Annotated[str, AfterValidator(_queue_name), WithJsonSchema({"type": "string", "pattern": QUEUE_NAME_PATTERN})]


class Strict(BaseModel):
    # Strict: "5" is not 5 and 1.0 is not a bool; unknown keys are typos.
    # Plain pydantic, not ninja's Schema: inputs are JSON, never ORM objects,
    # and Schema's per-object root validator made a batch of 100 messages
    # ten times as costly to validate.
    model_config = ConfigDict(extra="forbid", strict=True)


class QueueIn(Strict):
    visibility_timeout: int | None = Field(None, ge=0, le=MAX_SECONDS)
    max_deliveries: int | None = Field(None, ge=0, le=1000)
    dead_letter_queue: QueueName | None = None
    retention: int | None = Field(None, ge=1, le=10 * 365 * 24 * 3600)
    delay: int | None = Field(None, ge=0, le=MAX_DELAY)
    fifo: bool | None = None
    paused: bool | None = None
    max_message_bytes: int | None = Field(None, ge=1, le=16 * 1024 * 1024)
    max_depth: int | None = Field(None, ge=1)


# A queue as the API answers it: the shape of Queue.to_dict.
QueueOut = QueueDict


class QueueListOut(Schema):
    queues: list[QueueOut]


class MessageIn(Strict):
    body: Any = Field(..., description="Any JSON value.")
    priority: int = Field(0, ge=0, le=MAX_PRIORITY, description="Higher is delivered first.")
    delay: int | None = Field(None, ge=0, le=MAX_DELAY, description="Seconds before it can be received.")
    group: str | None = Field(None, min_length=1, max_length=MAX_KEY_CHARS, pattern=NO_NUL, description="Ordering key (FIFO queues).")
    dedup_id: str | None = Field(None, min_length=1, max_length=MAX_KEY_CHARS, pattern=NO_NUL)
    headers: dict[Annotated[str, Field(max_length=MAX_KEY_CHARS)], Annotated[str, Field(max_length=MAX_HEADER_VALUE_CHARS)]] = Field(
        default_factory=dict, max_length=MAX_HEADERS
    )


class Plain(list[dict[str, Any]]):
    """A batch's messages as the client's JSON objects, each one that
    MessageIn accepts as it is (``plainly_valid``). They skip its
    validation: a model made of each message was a quarter of the Python
    work on a batch's messages between the JSON and the INSERT."""


def _key_text(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_KEY_CHARS and "\x00" not in value


def _header_text(name: object, value: object) -> bool:
    return type(name) is str and len(name) <= MAX_KEY_CHARS and type(value) is str and len(value) <= MAX_HEADER_VALUE_CHARS


def plainly_valid(message: object) -> bool:
    """Whether MessageIn takes ``message`` (JSON as orjson reads it) as it
    is, by exact checks of what its fields allow. False decides nothing:
    MessageIn then validates it, and says what is wrong."""
    if type(message) is not dict or "body" not in message:
        return False
    for key, value in message.items():
        if key == "body":
            continue
        if key == "priority":
            ok = type(value) is int and 0 <= value <= MAX_PRIORITY
        elif key == "delay":
            ok = value is None or (type(value) is int and 0 <= value <= MAX_DELAY)
        elif key == "group" or key == "dedup_id":
            ok = value is None or _key_text(value)
        elif key == "headers":
            ok = type(value) is dict and len(value) <= MAX_HEADERS and all(_header_text(k, v) for k, v in value.items())
        else:
            ok = False
        if not ok:
            return False
    return True


def _plain_or_validated(value: Any, validate: ValidatorFunctionWrapHandler) -> Any:
    if type(value) is list and 0 < len(value) <= MAX_BATCH and all(plainly_valid(m) for m in value):
        return Plain(value)
    return validate(value)


# A batch's messages: Plain when each is plainly valid, else list[MessageIn].
Messages = Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_BATCH), WrapValidator(_plain_or_validated)]


class BatchIn(Strict):
    messages: Messages


def _send_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "messages" in value else "single"


SendIn = Annotated[
    Annotated[BatchIn, Tag("batch")] | Annotated[MessageIn, Tag("single")],
    Discriminator(_send_kind),
]


class SentOut(Schema):
    id: str
    duplicate: bool


class SendOut(Schema):
    messages: list[SentOut]


class ReceiveIn(Strict):
    max: int = Field(1, ge=1, le=100)
    visibility_timeout: int | None = Field(None, ge=0, le=MAX_SECONDS)
    wait: float = Field(0, ge=0, le=20)
    consumer: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,40}$")
    ack: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None,
        max_length=1000,
        description=(
            "Receipts to acknowledge before leasing, in the same call (what POST …/ack does): "
            "a consumer's next receive carries the acks of what it finished. The answer then "
            "has `acked` and `stale` as /ack's has."
        ),
    )


class DeliveryOut(Schema):
    id: str
    body: Any
    headers: dict[str, str]
    priority: int
    group: str | None
    delivery_count: int
    enqueued_at: str
    receipt: str
    lease_expires_at: str


class ReceiveOut(Schema):
    messages: list[DeliveryOut]
    acked: list[str] | None = Field(None, description="With `ack`: the ids acknowledged.")
    stale: list[str] | None = Field(None, description="With `ack`: the receipts that were stale.")


class AckIn(Strict):
    receipts: Receipts


class AckOut(Schema):
    acked: list[str]
    stale: list[str]


class NackIn(Strict):
    receipts: Receipts
    delay: int = Field(0, ge=0, le=MAX_DELAY)
    reason: str = Field("", max_length=2000, pattern=NO_NUL)


class NackOut(Schema):
    nacked: list[str]
    stale: list[str]


class ExtendIn(Strict):
    receipts: Receipts
    visibility_timeout: int = Field(..., ge=0, le=MAX_SECONDS)


class ExtendOut(Schema):
    extended: list[str]
    stale: list[str]
    lease_expires_at: str


class RedriveIn(Strict):
    max: int | None = Field(None, ge=1, le=2**63 - 1)  # an SQL LIMIT


class CountOut(Schema):
    moved: int


class PurgedOut(Schema):
    purged: int


class BrowseOut(Schema):
    messages: list[dict[str, Any]]
    next: str | None = Field(None, description="Pass as `after` for the next page.")


class ErrorBody(Schema):
    code: str
    message: str


class ErrorOut(Schema):
    error: ErrorBody


BrowseState = Literal["ready", "delayed", "in_flight", "dead"]
