"""AWS Signature Version 4 verification for the SQS endpoint.

The access key id is an mqadmin token's key id, the secret key its secret
(kept sealed on the token, see ``Token.secret_sealed``: a signature can only
be checked with the secret itself). The server recomputes the signature from
the request exactly as the SDK computed it (botocore ``SigV4Auth``) and
compares in constant time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote

from django.http import HttpRequest
from django.utils import timezone

from ..models import Token
from . import errors

ALGORITHM = "AWS4-HMAC-SHA256"
# AWS refuses a request signed more than this far from its own clock, so a
# captured request cannot be replayed later.
MAX_CLOCK_SKEW = dt.timedelta(minutes=15)

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),\s*"
    r"Signature=(?P<signature>[0-9a-fA-F]{64})\s*"
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_INVALID_TOKEN = "The security token included in the request is invalid."


@dataclass(frozen=True)
class Signed:
    """A verified request: who signed it, and for which region."""

    token: Token
    region: str


def verify(request: HttpRequest, *, now: dt.datetime | None = None) -> Signed:
    """Check the request's SigV4 signature; returns the signing token.

    Raises MissingAuthenticationToken, IncompleteSignature,
    InvalidClientTokenId (unknown, revoked or unsignable key) or
    SignatureDoesNotMatch (wrong secret, altered request, expired date)."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise errors.MissingAuthenticationToken("Request is missing Authentication Token")
    match = _AUTH.fullmatch(header.strip())
    if match is None:
        raise errors.IncompleteSignature(
            f"Authorization header requires {ALGORITHM} with Credential, SignedHeaders and Signature."
        )
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise errors.IncompleteSignature("Credential must read <key id>/<date>/<region>/<service>/aws4_request.")
    key_id, scope_date, region, service, _ = parts
    signed_headers = match["signed"].split(";")
    if "host" not in signed_headers:
        raise errors.SignatureDoesNotMatch("The host header must be signed.")

    amz_date = request.headers.get("X-Amz-Date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise errors.IncompleteSignature("X-Amz-Date must be a date like 20250101T000000Z.") from None
    now = now or timezone.now()
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise errors.SignatureDoesNotMatch(
            f"Signature expired: {amz_date} is now earlier or later than the server time "
            f"{now:%Y%m%dT%H%M%SZ} by more than {int(MAX_CLOCK_SKEW.total_seconds() // 60)} minutes."
        )
    if scope_date != amz_date[:8]:
        raise errors.SignatureDoesNotMatch(_SIGNATURE_MISMATCH)

    token = Token.objects.active().filter(key_id=key_id).first()
    secret = token.signing_secret() if token is not None else None
    if token is None:
        raise errors.InvalidClientTokenId(_INVALID_TOKEN)
    if secret is None:
        raise errors.InvalidClientTokenId(
            "This token cannot sign requests: it was issued before SigV4 support, or with another "
            "SECRET_KEY. Create a new token with `mq token create`."
        )

    canonical = canonical_request(request, signed_headers)
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, f"{scope_date}/{region}/{service}/aws4_request", _sha256(canonical.encode())]
    )
    key = signing_key(secret, scope_date, region, service)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["signature"].lower()):
        raise errors.SignatureDoesNotMatch(_SIGNATURE_MISMATCH)

    token.touch(now)
    return Signed(token=token, region=region)


def claimed_key_id(request: HttpRequest) -> str | None:
    """The access key id a request's Authorization header names, verified or not."""
    match = _AUTH.fullmatch(request.headers.get("Authorization", "").strip())
    return match["credential"].partition("/")[0] if match else None


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(request: HttpRequest, signed_headers: list[str]) -> str:
    """The canonical request SigV4 signs, rebuilt from what we received."""
    headers = []
    for name in sorted(signed_headers):
        value = request.headers.get(name, "")
        # Trimall: no outer spaces, inner runs of spaces as one.
        headers.append(f"{name}:{' '.join(value.split())}")
    payload_hash = request.headers.get("X-Amz-Content-SHA256") or _sha256(request.body)
    return "\n".join(
        [
            request.method or "POST",
            _canonical_path(request.path),
            _canonical_query(request.META.get("QUERY_STRING", "")),
            "\n".join(headers) + "\n",
            ";".join(sorted(signed_headers)),
            payload_hash,
        ]
    )


def _canonical_path(path: str) -> str:
    # As botocore: dot segments and empty segments removed, then URI-encoded.
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
        else:
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~")


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs = [pair.partition("=")[::2] for pair in query.split("&")]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
