"""SQS errors as SQS's JSON protocol returns them: a JSON body with ``__type``
and ``message``, and the ``x-amzn-query-error: <code>;<Sender|Receiver>``
header that SDKs read the classic (query protocol) error code from."""

from __future__ import annotations

import orjson
from django.http import HttpResponse

JSON_CONTENT_TYPE = "application/x-amz-json-1.0"


class SQSError(Exception):
    """An error the endpoint answers with; subclasses set the SQS names."""

    #: the error shape, sent as ``__type``
    type_name = "com.amazonaws.sqs#InvalidParameterValue"
    #: the classic error code SDKs raise (x-amzn-query-error)
    query_code = "InvalidParameterValue"
    status = 400
    fault = "Sender"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def response(self, request_id: str) -> HttpResponse:
        body = {"__type": self.type_name, "message": self.message}
        response = HttpResponse(orjson.dumps(body), status=self.status, content_type=JSON_CONTENT_TYPE)
        response["x-amzn-query-error"] = f"{self.query_code};{self.fault}"
        response["x-amzn-RequestId"] = request_id
        return response


def _error(name: str, type_name: str, query_code: str, status: int = 400, fault: str = "Sender") -> type[SQSError]:
    return type(name, (SQSError,), {"type_name": type_name, "query_code": query_code, "status": status, "fault": fault})


SQS = "com.amazonaws.sqs#"
CORAL = "com.amazon.coral.service#"

# Authentication and authorization (403, as AWS answers them).
MissingAuthenticationToken = _error("MissingAuthenticationToken", CORAL + "MissingAuthenticationTokenException", "MissingAuthenticationToken", 403)
InvalidClientTokenId = _error("InvalidClientTokenId", CORAL + "UnrecognizedClientException", "InvalidClientTokenId", 403)
SignatureDoesNotMatch = _error("SignatureDoesNotMatch", CORAL + "InvalidSignatureException", "SignatureDoesNotMatch", 403)
IncompleteSignature = _error("IncompleteSignature", CORAL + "IncompleteSignatureException", "IncompleteSignature", 400)
AccessDenied = _error("AccessDenied", CORAL + "AccessDeniedException", "AccessDenied", 403)

# Request shape.
UnknownOperation = _error("UnknownOperation", CORAL + "UnknownOperationException", "InvalidAction")
MalformedRequest = _error("MalformedRequest", CORAL + "SerializationException", "MalformedQueryString")
MissingParameter = _error("MissingParameter", "com.amazon.coral.validate#ValidationException", "MissingParameter")
InvalidParameterValue = _error("InvalidParameterValue", SQS + "InvalidParameterValue", "InvalidParameterValue")

# The modeled SQS errors.
QueueDoesNotExist = _error("QueueDoesNotExist", SQS + "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue")
QueueNameExists = _error("QueueNameExists", SQS + "QueueNameExists", "QueueAlreadyExists")
InvalidAttributeName = _error("InvalidAttributeName", SQS + "InvalidAttributeName", "InvalidAttributeName")
InvalidAttributeValue = _error("InvalidAttributeValue", SQS + "InvalidAttributeValue", "InvalidAttributeValue")
InvalidMessageContents = _error("InvalidMessageContents", SQS + "InvalidMessageContents", "InvalidMessageContents")
ReceiptHandleIsInvalid = _error("ReceiptHandleIsInvalid", SQS + "ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid")
MessageNotInflight = _error("MessageNotInflight", SQS + "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight")
EmptyBatchRequest = _error("EmptyBatchRequest", SQS + "EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest")
TooManyEntriesInBatchRequest = _error(
    "TooManyEntriesInBatchRequest", SQS + "TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
)
BatchEntryIdsNotDistinct = _error(
    "BatchEntryIdsNotDistinct", SQS + "BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
)
InvalidBatchEntryId = _error("InvalidBatchEntryId", SQS + "InvalidBatchEntryId", "AWS.SimpleQueueService.InvalidBatchEntryId")
BatchRequestTooLong = _error("BatchRequestTooLong", SQS + "BatchRequestTooLong", "AWS.SimpleQueueService.BatchRequestTooLong")
UnsupportedOperation = _error("UnsupportedOperation", SQS + "UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation")
# SDKs retry this code with backoff.
RequestThrottled = _error("RequestThrottled", SQS + "RequestThrottled", "RequestThrottled", 429)
OverLimit = _error("OverLimit", SQS + "OverLimit", "OverLimit", 403)

# The server's side.
ServiceUnavailable = _error("ServiceUnavailable", SQS + "ServiceUnavailable", "ServiceUnavailable", 503, "Server")
InternalError = _error("InternalError", SQS + "InternalError", "InternalError", 500, "Receiver")
