"""The SQS actions: each reads SQS's request shape, checks the token's scope,
calls the broker and answers in SQS's response shape. Domain errors are left
to the view to translate (``views.translate``)."""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from asgiref.sync import sync_to_async

from .. import broker, notify
from ..exceptions import InvalidValue, QueueExists
from ..models import Message, Queue, Scope, Token, is_queue_name
from . import attributes as attrs
from . import errors

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 1024 * 1024
# SQS's maximum visibility timeout (12 hours).
MAX_VISIBILITY_SECONDS = 43200

_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")
# Characters SQS accepts in a message body (XML 1.0's set).
_BAD_BODY_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NO_QUEUE = "The specified queue does not exist."


@dataclass(frozen=True)
class Call:
    """One authenticated SQS request."""

    action: str
    token: Token
    region: str
    base_url: str  # scheme://host, where queue URLs point

    def queue_url(self, name: str) -> str:
        return f"{self.base_url}/sqs/{name}"

    def require(self, scope: str, queue_name: str | None = None) -> None:
        if not self.token.allows(scope, queue_name):
            resource = attrs.queue_arn(queue_name, self.region) if queue_name else "*"
            raise errors.AccessDenied(
                f"User: {self.token.key_id} is not authorized to perform: sqs:{self.action} on resource: {resource} "
                f"(token scopes {self.token.scopes}, queues {self.token.queue_pattern})."
            )

    def require_sees(self, queue_name: str) -> None:
        if not self.token.sees(queue_name):
            self.require(Scope.ADMIN, queue_name)


class Params:
    """Typed access to a request's JSON members, failing as SQS does."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            raise errors.MissingParameter(f"The request must contain the parameter {key}.")
        return value

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self._get(key, required)
        if value is not None and not isinstance(value, str):
            raise errors.InvalidParameterValue(f"Value for parameter {key} must be a string.")
        return value

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.InvalidParameterValue(f"Value for parameter {key} must be an integer.")
        if not low <= value <= high:
            raise errors.InvalidParameterValue(
                f"Value {value} for parameter {key} is invalid. Reason: Must be between {low} and {high}, if provided."
            )
        return value

    def strings(self, key: str) -> list[str]:
        value = self._get(key, False) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.InvalidParameterValue(f"Value for parameter {key} must be a list of strings.")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, False) or {}
        if not isinstance(value, dict):
            raise errors.InvalidParameterValue(f"Value for parameter {key} must be a map.")
        return value

    def queue_name(self) -> str:
        url = self.string("QueueUrl", required=True)
        assert url is not None
        name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        if not is_queue_name(name):
            raise errors.QueueDoesNotExist(_NO_QUEUE)
        return name

    def entries(self) -> list[Params]:
        """A batch's entries, checked as SQS checks them."""
        value = self._get("Entries", True)
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            raise errors.InvalidParameterValue("Value for parameter Entries must be a list of entries.")
        if not value:
            raise errors.EmptyBatchRequest("There should be at least one SendMessageBatchRequestEntry in the request.")
        if len(value) > MAX_BATCH_ENTRIES:
            raise errors.TooManyEntriesInBatchRequest(
                f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. You have sent {len(value)}."
            )
        ids = [e.get("Id") for e in value]
        for entry_id in ids:
            if not isinstance(entry_id, str) or not _BATCH_ID.fullmatch(entry_id):
                raise errors.InvalidBatchEntryId(
                    "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
                    "It can be at most 80 letters long."
                )
        if len(set(ids)) != len(ids):
            raise errors.BatchEntryIdsNotDistinct("Two or more batch entries in the request have the same Id.")
        return [Params(e) for e in value]


def _failed(entry_id: str, error: errors.SQSError) -> dict[str, Any]:
    return {"Id": entry_id, "SenderFault": error.fault == "Sender", "Code": error.query_code, "Message": error.message}


# --------------------------------------------------------------------------- #
# Queues
# --------------------------------------------------------------------------- #


def create_queue(call: Call, p: Params) -> dict[str, Any]:
    name = p.string("QueueName", required=True)
    assert name is not None
    if not is_queue_name(name):
        raise errors.InvalidParameterValue(
            "Can only include alphanumeric characters, hyphens, underscores or dots (not . or .. alone). 1 to 80 in length."
        )
    call.require(Scope.ADMIN, name)
    if p.mapping("tags"):
        raise errors.InvalidParameterValue("Queue tags are not supported by mqadmin.")
    given = p.mapping("Attributes")
    if name.endswith(".fifo") and "FifoQueue" not in given:
        raise errors.InvalidParameterValue("A queue named *.fifo must be created with the attribute FifoQueue=true.")
    config = attrs.queue_config(given, name=name)
    # SQS's defaults, where they differ from mqadmin's: no receive limit
    # without a RedrivePolicy, and four days of retention.
    defaults = {"max_deliveries": 0, "retention": attrs.SQS_DEFAULT_RETENTION_SECONDS}
    try:
        broker.put_queue(name, {**defaults, **config}, create_only=True, dead_letter_cycles=True)
    except QueueExists:
        # CreateQueue is idempotent in SQS, unless the attributes differ.
        queue = broker.get_queue(name)
        for key, value in config.items():
            current = getattr(queue, key)
            if key == "dead_letter_queue":
                current = current.name if current else None
            if current != value:
                raise errors.QueueNameExists(
                    f"A queue already exists with the same name and a different value for attribute {key}"
                ) from None
    return {"QueueUrl": call.queue_url(name)}


def get_queue_url(call: Call, p: Params) -> dict[str, Any]:
    name = p.string("QueueName", required=True)
    assert name is not None
    if not is_queue_name(name):
        raise errors.QueueDoesNotExist(_NO_QUEUE)
    call.require_sees(name)
    broker.get_queue(name)
    return {"QueueUrl": call.queue_url(name)}


def list_queues(call: Call, p: Params) -> dict[str, Any]:
    prefix = p.string("QueueNamePrefix") or ""
    limit = p.integer("MaxResults", 1, 1000)
    after = ""
    if token := p.string("NextToken"):
        try:
            after = base64.urlsafe_b64decode(token.encode()).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise errors.InvalidParameterValue("Invalid NextToken value.") from None
    qs = Queue.objects.filter(name__startswith=prefix, name__gt=after).order_by("name").values_list("name", flat=True)
    names = [n for n in qs if call.token.sees(n)]
    page = names[: limit or 1000]
    out: dict[str, Any] = {}
    if page:
        out["QueueUrls"] = [call.queue_url(n) for n in page]
    if limit and len(names) > limit:
        out["NextToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
    return out


def delete_queue(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    call.require(Scope.ADMIN, name)
    broker.delete_queue(broker.get_queue(name))
    return {}


def purge_queue(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    call.require(Scope.ADMIN, name)
    broker.purge(broker.get_queue(name))
    return {}


def get_queue_attributes(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    wanted = p.strings("AttributeNames")
    known = attrs.WRITABLE | attrs.READ_ONLY | attrs.NOT_SUPPORTED | {"All"}
    for key in wanted:
        if key not in known:
            raise errors.InvalidAttributeName(f"Unknown Attribute {key}.")
    call.require_sees(name)
    queue = broker.get_queue(name)
    if not wanted:
        return {}
    values = attrs.queue_attributes(queue, broker.queue_counts([queue.id])[queue.id], region=call.region)
    if "All" not in wanted:
        values = {k: v for k, v in values.items() if k in wanted}
    return {"Attributes": values}


def set_queue_attributes(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    call.require(Scope.ADMIN, name)
    queue = broker.get_queue(name)
    given = p.mapping("Attributes")
    if "FifoQueue" in given and attrs.boolean("FifoQueue", str(given["FifoQueue"])) != queue.fifo:
        raise errors.InvalidAttributeValue("FifoQueue cannot be changed after the queue is created.")
    config = attrs.queue_config(given, name=name)
    if config:
        # SQS takes any dead-letter target, even one whose chain leads back.
        broker.put_queue(name, config, dead_letter_cycles=True)
    return {}


# --------------------------------------------------------------------------- #
# Send
# --------------------------------------------------------------------------- #


@dataclass
class Outgoing:
    message: broker.NewMessage
    md5_body: str
    md5_attributes: str | None


def _outgoing(queue: Queue, p: Params) -> Outgoing:
    """The message for one SendMessage (or batch entry); raises SQSError."""
    body = p.string("MessageBody", required=True)
    assert body is not None
    if body == "":
        raise errors.MissingParameter("The request must contain the parameter MessageBody.")
    if _BAD_BODY_CHAR.search(body):
        raise errors.InvalidMessageContents("Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF")
    size = len(body.encode())
    if size > queue.max_message_bytes:
        raise errors.InvalidParameterValue(
            f"One or more parameters are invalid. Reason: Message must be shorter than {queue.max_message_bytes} bytes."
        )
    if p.mapping("MessageSystemAttributes"):
        raise errors.InvalidParameterValue("MessageSystemAttributes (AWSTraceHeader) are not supported by mqadmin.")
    headers = attrs.headers_from_attributes(p.data.get("MessageAttributes"))
    delay = p.integer("DelaySeconds", 0, 900)
    group = p.string("MessageGroupId")
    dedup_id = p.string("MessageDeduplicationId")
    for key, value in (("MessageGroupId", group), ("MessageDeduplicationId", dedup_id)):
        if value is not None and not 1 <= len(value) <= 128:
            raise errors.InvalidParameterValue(f"Value for parameter {key} must be 1 to 128 characters.")
    if queue.fifo:
        if group is None:
            raise errors.MissingParameter("The request must contain the parameter MessageGroupId.")
        if dedup_id is None:
            raise errors.InvalidParameterValue(
                "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly"
            )
        if delay is not None:
            raise errors.InvalidParameterValue(
                f"Value {delay} for parameter DelaySeconds is invalid. Reason: The request include parameter that is not "
                "valid for this queue type."
            )
    shown = attrs.attributes_from_headers(headers)
    return Outgoing(
        # Stored as a JSON string, so the body comes back byte for byte.
        message=broker.NewMessage(body=orjson.dumps(body), delay=delay, group=group, dedup_id=dedup_id, headers=headers),
        md5_body=attrs.md5_of_body(body),
        md5_attributes=attrs.md5_of_attributes(shown) if shown else None,
    )


def _sent(queue: Queue, out: Outgoing, published: broker.Published) -> dict[str, Any]:
    result: dict[str, Any] = {"MessageId": published.id, "MD5OfMessageBody": out.md5_body}
    if out.md5_attributes:
        result["MD5OfMessageAttributes"] = out.md5_attributes
    if queue.fifo:
        result["SequenceNumber"] = published.id.zfill(20)
    return result


def send_message(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    call.require(Scope.PRODUCE, name)
    queue = broker.get_queue(name)
    out = _outgoing(queue, p)
    [published] = broker.publish(queue, [out.message])
    return _sent(queue, out, published)


def send_message_batch(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    entries = p.entries()
    call.require(Scope.PRODUCE, name)
    queue = broker.get_queue(name)
    total = sum(len(str(e.data.get("MessageBody", "")).encode()) for e in entries)
    if total > MAX_BATCH_BYTES:
        raise errors.BatchRequestTooLong(f"Batch requests cannot be longer than {MAX_BATCH_BYTES} bytes. You have sent {total} bytes.")
    good: list[tuple[str, Outgoing]] = []
    failed = []
    for entry in entries:
        entry_id = entry.data["Id"]
        try:
            good.append((entry_id, _outgoing(queue, entry)))
        except errors.SQSError as exc:
            failed.append(_failed(entry_id, exc))
    # The valid entries go in one all-or-nothing publish.
    published = broker.publish(queue, [out.message for _, out in good]) if good else []
    successful = [
        {"Id": entry_id, **_sent(queue, out, pub)} for (entry_id, out), pub in zip(good, published, strict=True)
    ]
    return {"Successful": successful, "Failed": failed}


# --------------------------------------------------------------------------- #
# Receive
# --------------------------------------------------------------------------- #

SYSTEM_ATTRIBUTES = {
    "All",
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
}


async def receive_message(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    max_messages = p.integer("MaxNumberOfMessages", 1, 10) or 1
    visibility = p.integer("VisibilityTimeout", 0, MAX_VISIBILITY_SECONDS)
    wait = p.integer("WaitTimeSeconds", 0, 20) or 0
    system = set(p.strings("AttributeNames")) | set(p.strings("MessageSystemAttributeNames"))
    wanted_attributes = p.strings("MessageAttributeNames")
    call.require(Scope.CONSUME, name)
    queue = await broker.aget_queue(name)
    looks = broker.thread_looks(None, max_messages=max_messages, visibility_timeout=visibility, consumer_id=None)
    offer = notify.Offer(max_messages, visibility)
    deliveries = (await broker.long_poll(queue, looks, offer=offer, wait=wait)).deliveries
    if not deliveries:
        return {}
    return await _areceived(queue, deliveries, system, wanted_attributes)


def _received(
    queue: Queue, deliveries: list[broker.Delivery], system: set[str], wanted_attributes: list[str]
) -> dict[str, Any]:
    every = "All" in system
    dedup_ids: dict[int, str | None] = {}
    if every or "MessageDeduplicationId" in system:
        dedup_ids = dict(Message.objects.filter(id__in=[d.id for d in deliveries]).values_list("id", "dedup_id"))
    received_at = str(int(time.time() * 1000))
    messages = []
    for d in deliveries:
        decoded = orjson.loads(d.body)
        # Sent through SQS: the JSON string is the body. Sent through the JSON
        # API: the JSON text itself is.
        body = decoded if isinstance(decoded, str) else d.body
        message: dict[str, Any] = {
            "MessageId": str(d.id),
            "ReceiptHandle": d.receipt,
            "MD5OfBody": attrs.md5_of_body(body),
            "Body": body,
        }
        system_values = {
            "SentTimestamp": str(int(d.enqueued_at * 1000)),
            "ApproximateReceiveCount": str(d.delivery_count),
        }
        if d.delivery_count == 1:
            # The first receive is this one; later ones do not know it.
            system_values["ApproximateFirstReceiveTimestamp"] = received_at
        if d.group:
            system_values["MessageGroupId"] = d.group
        if queue.fifo:
            system_values["SequenceNumber"] = str(d.id).zfill(20)
        if dedup_ids.get(d.id):
            system_values["MessageDeduplicationId"] = dedup_ids[d.id]  # type: ignore[assignment]
        selected = {k: v for k, v in system_values.items() if every or k in system}
        if selected:
            message["Attributes"] = selected
        shown = attrs.select_attributes(attrs.attributes_from_headers(orjson.loads(d.headers)), wanted_attributes)
        if shown:
            message["MessageAttributes"] = shown
            message["MD5OfMessageAttributes"] = attrs.md5_of_attributes(shown)
        messages.append(message)
    return {"Messages": messages}


_areceived = sync_to_async(_received)


# --------------------------------------------------------------------------- #
# Delete, change visibility
# --------------------------------------------------------------------------- #


def _receipt(p: Params) -> str:
    handle = p.string("ReceiptHandle", required=True)
    assert handle is not None
    try:
        broker.parse_receipts([handle])
    except InvalidValue:
        raise errors.ReceiptHandleIsInvalid(f'The input receipt handle "{handle[:100]}" is not a valid receipt handle.') from None
    return handle


def delete_message(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    handle = _receipt(p)
    call.require(Scope.CONSUME, name)
    # As in SQS, an outdated receipt handle succeeds without deleting: the
    # message was received again and its newer receipt owns it.
    broker.ack(broker.get_queue(name), [handle])
    return {}


def delete_message_batch(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    entries = p.entries()
    call.require(Scope.CONSUME, name)
    queue = broker.get_queue(name)
    good: list[tuple[str, str]] = []
    failed = []
    for entry in entries:
        try:
            good.append((entry.data["Id"], _receipt(entry)))
        except errors.SQSError as exc:
            failed.append(_failed(entry.data["Id"], exc))
    if good:
        broker.ack(queue, [handle for _, handle in good])
    return {"Successful": [{"Id": entry_id} for entry_id, _ in good], "Failed": failed}


def _change_visibility(queue: Queue, handle: str, timeout: int) -> None:
    if timeout == 0:
        # Visible again at once; like an SQS receive, it counts toward the
        # queue's maxReceiveCount, so a message given back too often is
        # dead-lettered.
        result = broker.nack(queue, [handle], reason="visibility timeout changed to 0")
    else:
        result, _ = broker.extend(queue, [handle], timeout)
    if result.stale:
        raise errors.MessageNotInflight("Message does not exist or is not available for visibility timeout change.")


def _visibility(p: Params) -> int:
    timeout = p.integer("VisibilityTimeout", 0, MAX_VISIBILITY_SECONDS)
    if timeout is None:
        raise errors.MissingParameter("The request must contain the parameter VisibilityTimeout.")
    return timeout


def change_message_visibility(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    handle = _receipt(p)
    timeout = _visibility(p)
    call.require(Scope.CONSUME, name)
    _change_visibility(broker.get_queue(name), handle, timeout)
    return {}


def change_message_visibility_batch(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    entries = p.entries()
    call.require(Scope.CONSUME, name)
    queue = broker.get_queue(name)
    successful, failed = [], []
    for entry in entries:
        entry_id = entry.data["Id"]
        try:
            _change_visibility(queue, _receipt(entry), _visibility(entry))
            successful.append({"Id": entry_id})
        except errors.SQSError as exc:
            failed.append(_failed(entry_id, exc))
    return {"Successful": successful, "Failed": failed}


def list_dead_letter_source_queues(call: Call, p: Params) -> dict[str, Any]:
    name = p.queue_name()
    call.require_sees(name)
    queue = broker.get_queue(name)
    names = Queue.objects.filter(dead_letter_queue=queue).order_by("name").values_list("name", flat=True)
    return {"queueUrls": [call.queue_url(n) for n in names if call.token.sees(n)]}


Handler = Callable[[Call, Params], dict[str, Any]]
AsyncHandler = Callable[[Call, Params], Awaitable[dict[str, Any]]]

ACTIONS: dict[str, Handler] = {
    "CreateQueue": create_queue,
    "GetQueueUrl": get_queue_url,
    "ListQueues": list_queues,
    "DeleteQueue": delete_queue,
    "PurgeQueue": purge_queue,
    "GetQueueAttributes": get_queue_attributes,
    "SetQueueAttributes": set_queue_attributes,
    "SendMessage": send_message,
    "SendMessageBatch": send_message_batch,
    "DeleteMessage": delete_message,
    "DeleteMessageBatch": delete_message_batch,
    "ChangeMessageVisibility": change_message_visibility,
    "ChangeMessageVisibilityBatch": change_message_visibility_batch,
    "ListDeadLetterSourceQueues": list_dead_letter_source_queues,
}
ASYNC_ACTIONS: dict[str, AsyncHandler] = {"ReceiveMessage": receive_message}
# Real SQS actions mqadmin has nothing behind.
UNSUPPORTED = {
    "AddPermission",
    "RemovePermission",
    "TagQueue",
    "UntagQueue",
    "ListQueueTags",
    "StartMessageMoveTask",
    "CancelMessageMoveTask",
    "ListMessageMoveTasks",
}
