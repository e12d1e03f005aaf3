"""``/sqs/``: one view for every SQS action, dispatched on ``X-Amz-Target``.

Verifies the SigV4 signature, runs the action (in a worker thread; the
long-polling ReceiveMessage on the event loop) and translates every error,
once, into SQS's JSON error shape."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .. import exceptions as mq
from ..api.auth import brake
from . import actions, errors, sigv4

log = logging.getLogger("queues.sqs")

TARGET_PREFIX = "AmazonSQS."


@csrf_exempt
async def endpoint(request: HttpRequest) -> HttpResponse:
    request_id = str(uuid.uuid4())
    try:
        result = await _handle(request)
    except Exception as exc:  # every failure answers in SQS's error shape
        return translate(exc, request).response(request_id)
    response = HttpResponse(orjson.dumps(result), content_type=errors.JSON_CONTENT_TYPE)
    response["x-amzn-RequestId"] = request_id
    return response


async def _handle(request: HttpRequest) -> dict[str, Any]:
    if request.method != "POST":
        raise errors.UnknownOperation("mqadmin speaks SQS's JSON protocol: POST with X-Amz-Target: AmazonSQS.<Action>.")
    signed = await sync_to_async(_authenticate)(request)
    target = request.headers.get("X-Amz-Target", "")
    action = target.removeprefix(TARGET_PREFIX) if target.startswith(TARGET_PREFIX) else ""
    if action in actions.UNSUPPORTED:
        raise errors.UnsupportedOperation(f"{action} is not supported by mqadmin.")
    if action not in actions.ACTIONS and action not in actions.ASYNC_ACTIONS:
        raise errors.UnknownOperation(f"Unknown operation {target[:100]!r}.")
    try:
        data = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError:
        raise errors.MalformedRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise errors.MalformedRequest("The request body must be a JSON object.")
    call = actions.Call(
        action=action, token=signed.token, region=signed.region, base_url=f"{request.scheme}://{request.get_host()}"
    )
    params = actions.Params(data)
    if action in actions.ASYNC_ACTIONS:
        return await actions.ASYNC_ACTIONS[action](call, params)
    return await sync_to_async(actions.ACTIONS[action])(call, params)


def _authenticate(request: HttpRequest) -> sigv4.Signed:
    # The JSON API's brake on guessing applies here too: an address or an
    # access key id with too many failed signatures gets RequestThrottled
    # for a while, when its signature fails again (a valid one always passes).
    try:
        return sigv4.verify(request)
    except (errors.InvalidClientTokenId, errors.SignatureDoesNotMatch, errors.IncompleteSignature):
        brake(request.META.get("REMOTE_ADDR") or "unknown", sigv4.claimed_key_id(request))
        raise


def translate(exc: Exception, request: HttpRequest) -> errors.SQSError:
    """SQS's error for anything an action raised."""
    if isinstance(exc, errors.SQSError):
        return exc
    if isinstance(exc, mq.QueueNotFound):
        return errors.QueueDoesNotExist("The specified queue does not exist.")
    if isinstance(exc, mq.TooManyFailures):
        return errors.RequestThrottled(exc.message)
    if isinstance(exc, mq.QueueFull):
        return errors.OverLimit(exc.message)
    if isinstance(exc, (mq.MessageTooLarge, mq.RequestTooLarge, RequestDataTooBig)):
        return errors.InvalidParameterValue(
            getattr(exc, "message", "") or "One or more parameters are invalid. Reason: the request is too large."
        )
    if isinstance(exc, mq.MQError):  # InvalidValue, QueueInUse, QueueExists ...
        return errors.InvalidParameterValue(exc.message)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "message_dict"):
            field, messages = next(iter(exc.message_dict.items()))
            return errors.InvalidAttributeValue(f"{field}: {messages[0]}")
        return errors.InvalidAttributeValue(exc.messages[0])
    if isinstance(exc, (OperationalError, InterfaceError, DatabaseError)) or type(exc).__name__ == "PoolTimeout":
        log.warning("database unavailable on %s: %s", request.path, exc)
        return errors.ServiceUnavailable("The database is unavailable; retry shortly.")
    log.exception("unhandled error on %s", request.path)
    return errors.InternalError("Something went wrong on our side; it was logged.")
