"""Translations between SQS's vocabulary and mqadmin's: queue attributes to
queue settings, message attributes to headers, and SQS's MD5 digests."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from typing import Any

import orjson

from ..models import Queue, QueueCounts
from . import errors

# SQS's own default retention (4 days), given to queues created through SQS
# so a script written for SQS sees the lifetime it expects.
SQS_DEFAULT_RETENTION_SECONDS = 4 * 24 * 3600
ACCOUNT_ID = "000000000000"

# attribute -> (queue field, lowest, highest), as SQS bounds them.
INTEGER_ATTRIBUTES: dict[str, tuple[str, int, int]] = {
    "VisibilityTimeout": ("visibility_timeout", 0, 43200),
    "DelaySeconds": ("delay", 0, 900),
    "MessageRetentionPeriod": ("retention", 60, 1209600),
    "MaximumMessageSize": ("max_message_bytes", 1024, 1048576),
}
WRITABLE = {*INTEGER_ATTRIBUTES, "RedrivePolicy", "FifoQueue", "ContentBasedDeduplication", "ReceiveMessageWaitTimeSeconds"}
READ_ONLY = {
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
}
# Real SQS attributes mqadmin has nothing behind: accepted in a read (and left
# out of the answer), refused in a write.
NOT_SUPPORTED = {
    "Policy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "RedriveAllowPolicy",
}


def queue_arn(name: str, region: str) -> str:
    return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{name}"


def queue_config(attributes: dict[str, Any], *, name: str) -> dict[str, Any]:
    """Queue settings (``broker.put_queue`` config) for SQS queue attributes.
    Raises InvalidAttributeName / InvalidAttributeValue."""
    config: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(value, str):
            raise errors.InvalidAttributeValue(f"Invalid value for the parameter {key}: attribute values are strings.")
        if key in INTEGER_ATTRIBUTES:
            field, low, high = INTEGER_ATTRIBUTES[key]
            number = _integer(key, value)
            if not low <= number <= high:
                raise errors.InvalidAttributeValue(f"Invalid value for the parameter {key}: must be {low} to {high}.")
            config[field] = number
        elif key == "FifoQueue":
            fifo = boolean(key, value)
            if fifo != name.endswith(".fifo"):
                raise errors.InvalidParameterValue(
                    "The name of a FIFO queue must end with the .fifo suffix, and only a FIFO queue's name may."
                )
            config["fifo"] = fifo
        elif key == "ContentBasedDeduplication":
            if boolean(key, value):
                raise errors.InvalidAttributeValue(
                    "ContentBasedDeduplication is not supported: send a MessageDeduplicationId with each message."
                )
        elif key == "ReceiveMessageWaitTimeSeconds":
            if _integer(key, value) != 0:
                raise errors.InvalidAttributeValue(
                    "A queue-wide ReceiveMessageWaitTimeSeconds is not supported: pass WaitTimeSeconds to ReceiveMessage."
                )
        elif key == "RedrivePolicy":
            config.update(redrive_config(value))
        elif key in READ_ONLY or key in NOT_SUPPORTED:
            raise errors.InvalidAttributeName(f"Attribute {key} cannot be set on this queue.")
        else:
            raise errors.InvalidAttributeName(f"Unknown Attribute {key}.")
    return config


def redrive_config(value: str) -> dict[str, Any]:
    if value == "":
        return {"dead_letter_queue": None, "max_deliveries": 0}
    try:
        policy = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise errors.InvalidAttributeValue("Invalid value for the parameter RedrivePolicy: not JSON.") from None
    if not isinstance(policy, dict) or "deadLetterTargetArn" not in policy or "maxReceiveCount" not in policy:
        raise errors.InvalidAttributeValue(
            "Value for parameter RedrivePolicy is invalid. Reason: Redrive policy does not contain mandatory attribute: "
            "deadLetterTargetArn and maxReceiveCount."
        )
    arn = policy["deadLetterTargetArn"]
    if not isinstance(arn, str) or not arn.startswith("arn:") or arn.count(":") < 5:
        raise errors.InvalidAttributeValue(f"Value {arn!r} for parameter deadLetterTargetArn is invalid.")
    try:
        count = int(policy["maxReceiveCount"])
    except (TypeError, ValueError):
        count = 0
    if not 1 <= count <= 1000:
        raise errors.InvalidAttributeValue("Value for parameter maxReceiveCount is invalid: must be 1 to 1000.")
    return {"dead_letter_queue": arn.rsplit(":", 1)[1], "max_deliveries": count}


def queue_attributes(queue: Queue, counts: QueueCounts, *, region: str) -> dict[str, str]:
    """Every SQS attribute mqadmin has a value for: the queue as the API shows
    it (``Queue.to_dict``), in SQS's names and string values."""
    q = queue.to_dict(counts)
    out = {
        "QueueArn": queue_arn(q["name"], region),
        "ApproximateNumberOfMessages": str(q["ready"]),
        "ApproximateNumberOfMessagesNotVisible": str(q["in_flight"]),
        "ApproximateNumberOfMessagesDelayed": str(q["delayed"]),
        # Epoch seconds: the dict's times are ISO text.
        "CreatedTimestamp": str(int(queue.created_at.timestamp())),
        "LastModifiedTimestamp": str(int(queue.updated_at.timestamp())),
        "VisibilityTimeout": str(q["visibility_timeout"]),
        "DelaySeconds": str(q["delay"]),
        "MaximumMessageSize": str(q["max_message_bytes"]),
        "ReceiveMessageWaitTimeSeconds": "0",
    }
    # An mqadmin queue without retention keeps messages forever, which SQS
    # cannot express: the attribute is left out rather than made up.
    if q["retention"] is not None:
        out["MessageRetentionPeriod"] = str(q["retention"])
    if q["dead_letter_queue"] is not None:
        out["RedrivePolicy"] = orjson.dumps(
            {"deadLetterTargetArn": queue_arn(q["dead_letter_queue"], region), "maxReceiveCount": q["max_deliveries"]}
        ).decode()
    if q["fifo"]:
        out["FifoQueue"] = "true"
        out["ContentBasedDeduplication"] = "false"
    return out


def _integer(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise errors.InvalidAttributeValue(f"Invalid value for the parameter {key}: not an integer.") from None


def boolean(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise errors.InvalidAttributeValue(f"Invalid value for the parameter {key}: true or false.")
    return value.lower() == "true"


# --------------------------------------------------------------------------- #
# Message attributes <-> headers
# --------------------------------------------------------------------------- #

#: The header naming the data type of each attribute that is not a plain
#: "String" (JSON object); every other header reads as a String attribute, so
#: messages sent through the JSON API show their headers to SQS consumers.
TYPES_HEADER = "x-sqs-attribute-types"
MAX_ATTRIBUTES = 10
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
_DATA_TYPE = re.compile(r"(String|Number|Binary)(\.[A-Za-z0-9_.-]{1,250})?")


def headers_from_attributes(attributes: Any) -> dict[str, str]:
    """Headers for SQS MessageAttributes; raises InvalidParameterValue."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise errors.InvalidParameterValue("MessageAttributes must be a map of name to attribute value.")
    if len(attributes) > MAX_ATTRIBUTES:
        raise errors.InvalidParameterValue(f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].")
    headers: dict[str, str] = {}
    types: dict[str, str] = {}
    for name, attribute in attributes.items():
        if (
            not _ATTRIBUTE_NAME.fullmatch(name)
            or name.lower().startswith(("aws.", "amazon."))
            or name.lower() == TYPES_HEADER
            or ".." in name
            or name.startswith(".")
            or name.endswith(".")
        ):
            raise errors.InvalidParameterValue(f"Message attribute name '{name}' is invalid.")
        if not isinstance(attribute, dict) or not isinstance(attribute.get("DataType"), str):
            raise errors.InvalidParameterValue(f"The message attribute '{name}' must contain a DataType.")
        data_type = attribute["DataType"]
        if not _DATA_TYPE.fullmatch(data_type):
            raise errors.InvalidParameterValue(f"The type of message attribute '{name}' is invalid: {data_type!r}.")
        if attribute.get("StringListValues") or attribute.get("BinaryListValues"):
            raise errors.InvalidParameterValue("StringListValues and BinaryListValues are not supported (nor by SQS).")
        if data_type.startswith("Binary"):
            value = attribute.get("BinaryValue")
            try:
                valid = isinstance(value, str) and bool(base64.b64decode(value, validate=True))
            except binascii.Error:
                valid = False
            if not valid:
                raise errors.InvalidParameterValue(f"The message attribute '{name}' with type 'Binary' must use field 'BinaryValue'.")
        else:
            value = attribute.get("StringValue")
            if not isinstance(value, str) or value == "":
                raise errors.InvalidParameterValue(f"The message attribute '{name}' with type '{data_type}' must use field 'StringValue'.")
        assert isinstance(value, str)
        headers[name] = value
        if data_type != "String":
            types[name] = data_type
    if types:
        headers[TYPES_HEADER] = orjson.dumps(types).decode()
    return headers


def attributes_from_headers(headers: dict[str, str]) -> dict[str, dict[str, str]]:
    try:
        types = orjson.loads(headers.get(TYPES_HEADER, "{}"))
    except orjson.JSONDecodeError:
        types = {}
    out: dict[str, dict[str, str]] = {}
    for name, value in headers.items():
        if name == TYPES_HEADER:
            continue
        data_type = types.get(name, "String") if isinstance(types, dict) else "String"
        if data_type.startswith("Binary"):
            out[name] = {"DataType": data_type, "BinaryValue": value}
        else:
            out[name] = {"DataType": data_type, "StringValue": value}
    return out


def select_attributes(attributes: dict[str, dict[str, str]], wanted: list[str]) -> dict[str, dict[str, str]]:
    """The attributes a ReceiveMessage asked for: names, ``prefix.*``, or All."""
    if not wanted:
        return {}
    if "All" in wanted or ".*" in wanted:
        return attributes
    prefixes = tuple(w[:-1] for w in wanted if w.endswith(".*"))
    return {k: v for k, v in attributes.items() if k in wanted or (prefixes and k.startswith(prefixes))}


def md5_of_body(body: str) -> str:
    return hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()


def md5_of_attributes(attributes: dict[str, dict[str, str]]) -> str:
    """SQS's digest of message attributes: for each attribute by name, the
    length-prefixed (4-byte big-endian) name, data type, a transport byte (1
    string, 2 binary) and the length-prefixed value."""
    digest = hashlib.md5(usedforsecurity=False)

    def field(data: bytes) -> None:
        digest.update(struct.pack(">I", len(data)))
        digest.update(data)

    for name in sorted(attributes):
        attribute = attributes[name]
        field(name.encode())
        field(attribute["DataType"].encode())
        if "BinaryValue" in attribute:
            digest.update(b"\x02")
            field(base64.b64decode(attribute["BinaryValue"]))
        else:
            digest.update(b"\x01")
            field(attribute["StringValue"].encode())
    return digest.hexdigest()
