"""The HTTP edge's one translation of errors into the contract's JSON:
``{"error": {"code": ..., "message": ...}}``. Nothing here ever answers HTML,
and no bad input reaches a 500."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from ..exceptions import BadRequest, InvalidValue, MQError, RequestTooLarge, Unauthorized, Unavailable
from ..middleware import ResponseMiddleware

log = logging.getLogger("queues.api")
rejections = logging.getLogger("queues.requests")

# What a 503 tells the client to wait before it retries, in seconds.
UNAVAILABLE_RETRY_SECONDS = 1

# Longest client-chosen value (path, method, message) a log line repeats.
LOGGED_VALUE_CHARS = 100


def json_bytes(data: Any) -> bytes:
    """The API's JSON text. It ends with a newline, as a line of text does:
    without one the shell's prompt sticks to the end of curl's output."""
    return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(json_bytes(data), status=status, content_type="application/json")


def error_response(code: str, message: str, status: int, **extra: Any) -> HttpResponse:
    response = json_response({"error": {"code": code, "message": message, **extra}}, status)
    if status == 429 and "retry_after" in extra:
        response["Retry-After"] = str(extra["retry_after"])
    elif status == 503:
        # Unavailable for now (the database, a limit): say when to come back.
        response["Retry-After"] = str(extra.get("retry_after", UNAVAILABLE_RETRY_SECONDS))
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="mqadmin"'
    return response


def from_mq_error(exc: MQError) -> HttpResponse:
    return error_response(exc.code, exc.message, exc.status, **exc.extra)


def _where(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "payload", "query", "q", "batch", "single")]
    return ".".join(parts)


# pydantic error types that mean "not the JSON shape asked for" (400) rather
# than "the right shape with a value we do not accept" (422).
def _is_type_error(kind: str) -> bool:
    return kind.endswith("_type") or kind in {"json_invalid", "union_tag_invalid"} or kind.endswith("_parsing")


def from_validation_error(exc: ValidationError) -> HttpResponse:
    return from_mq_error(invalid(exc.errors))


def invalid(errors: Any) -> MQError:
    """The contract's error for pydantic's ``errors``: 400 for the wrong
    shape or type, 422 for a value we do not accept."""
    first = errors[0] if errors else {"type": "value_error", "loc": (), "msg": "Invalid request"}
    kind = str(first.get("type", ""))
    where = _where(first.get("loc", ()))
    msg = str(first.get("msg", "invalid"))
    if kind == "extra_forbidden":
        msg = "Unknown field"
    elif kind == "missing":
        msg = "Field required"
    elif kind == "int_type" and isinstance(number := first.get("input"), float):
        # JSON has one number type: a number where an integer belongs is the
        # right type with a value we do not accept (422), like 10 for a
        # priority of 0-9. Only a string, boolean, null… is a type error (400).
        msg = _not_an_integer(number)
        return InvalidValue(f"{where}: {msg}" if where else msg)
    text = f"{where}: {msg}" if where else msg
    return BadRequest(text) if _is_type_error(kind) else InvalidValue(text)


def _not_an_integer(number: float) -> str:
    # Integers past 64 bits reach us as floats too (the JSON reader's limit).
    if not math.isfinite(number) or abs(number) >= 2**63:
        return f"{number:g} is out of range"
    if not number.is_integer():
        return f"should be a whole number, not {number:g}"
    return f"should be an integer written without a fraction or exponent, not {number!r}"


def install(api: NinjaAPI) -> None:
    @api.exception_handler(MQError)
    def _mq(request: HttpRequest, exc: MQError) -> HttpResponse:
        return from_mq_error(exc)

    @api.exception_handler(ValidationError)
    def _validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
        return from_validation_error(exc)

    @api.exception_handler(AuthenticationError)
    def _auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return from_mq_error(Unauthorized())

    @api.exception_handler(HttpError)
    def _http(request: HttpRequest, exc: HttpError) -> HttpResponse:
        cause = exc.__cause__
        if isinstance(cause, RequestDataTooBig):
            return from_mq_error(RequestTooLarge())
        if exc.status_code == 400:
            return from_mq_error(BadRequest("The request body is not valid JSON."))
        return error_response("error", exc.message, exc.status_code)

    @api.exception_handler(RequestDataTooBig)
    def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
        return from_mq_error(RequestTooLarge())

    @api.exception_handler(DjangoValidationError)
    def _model_validation(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
        if hasattr(exc, "message_dict"):
            field, messages = next(iter(exc.message_dict.items()))
            return from_mq_error(InvalidValue(f"{field}: {messages[0]}"))
        return from_mq_error(InvalidValue(exc.messages[0]))

    @api.exception_handler(Exception)
    def _anything(request: HttpRequest, exc: Exception) -> HttpResponse:
        if isinstance(exc, (OperationalError, InterfaceError)) or type(exc).__name__ == "PoolTimeout":
            log.warning("database unavailable: %s", exc)
            return from_mq_error(Unavailable())
        if isinstance(exc, DatabaseError):
            log.exception("database error on %s", request.path)
            return from_mq_error(Unavailable("The database refused the operation; retry shortly."))
        log.exception("unhandled error on %s", request.path)
        return error_response("internal_error", "Something went wrong on our side; it was logged.", 500)


# The contract's codes for Django's own error answers under /api/ (a CSRF
# failure is Django's 403).
_STATUS_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


class JSONErrorsMiddleware(ResponseMiddleware):
    """Under /api/, no response is an HTML error page: Django's own answers
    (405 from the router, 400 for a bad Host…) get the contract's JSON too."""

    def after(self, request: HttpRequest, response: HttpResponse, started: float) -> HttpResponse:
        return self._shape(request, response)

    @staticmethod
    def _shape(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if (
            response.status_code < 400
            or not request.path.startswith("/api/")
            or response.get("Content-Type", "").startswith("application/json")
        ):
            return response
        status = response.status_code
        code = _STATUS_CODES.get(status, "error" if status < 500 else "internal_error")
        if status == 405:
            allowed = response.get("Allow", "")
            shaped = error_response(code, f"{request.method} is not allowed here; use {allowed}.", status)
            shaped["Allow"] = allowed
            return shaped
        return error_response(code, response.reason_phrase or "Error", status)


def _cut(value: str, limit: int = LOGGED_VALUE_CHARS) -> str:
    return value if len(value) <= limit else value[:limit] + f"… ({len(value)} chars)"


def log_rejection(status: int, code: str, method: str, path: str, message: str) -> None:
    """One INFO line for a refused request, with why. A 404 is not logged
    (scanners make plenty); no value the client chose is repeated whole."""
    if 400 <= status < 500 and status != 404:
        rejections.info(
            "refused %d %s: %s %s: %s", status, code, _cut(method, 20), _cut(path), _cut(message, 2 * LOGGED_VALUE_CHARS)
        )


def _reason(response: HttpResponse) -> tuple[str, str]:
    """The error code and message of an error response: the contract's
    ``{"error": …}``, SQS's ``{"__type": …, "message": …}``, or else its
    status's reason phrase."""
    if not response.streaming and "json" in response.get("Content-Type", ""):
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                return str(error.get("code", "error")), str(error.get("message", ""))
            if "__type" in body:
                return str(body["__type"]).rpartition("#")[2], str(body.get("message", ""))
    return "-", response.reason_phrase


class RejectionLog(ResponseMiddleware):
    """Logs every refused request (``log_rejection``), whatever answered it:
    the API, the SQS endpoint, Django itself (a CSRF failure, a bad Host).
    Django's own line for a 4xx (WARNING, ``django.request``) is silenced in
    the settings: it repeats the whole path and says nothing of why."""

    def after(self, request: HttpRequest, response: HttpResponse, started: float) -> HttpResponse:
        if 400 <= response.status_code < 500 and response.status_code != 404:
            code, message = _reason(response)
            log_rejection(response.status_code, code, request.method or "", request.path, message)
        return response
