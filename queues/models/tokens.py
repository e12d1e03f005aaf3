"""API tokens: scopes, queue patterns, sealed secrets.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from fnmatch import fnmatchcase

from django.db import models
from django.utils import timezone


class Scope(models.TextChoices):
    PRODUCE = "produce", "Produce"
    CONSUME = "consume", "Consume"
    ADMIN = "admin", "Admin"
    # Reads /metrics only: for a Prometheus scrape config.
    METRICS = "metrics", "Metrics"


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a plain SHA-256 is as strong as a slow
    # password hash here and keeps per-request auth cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def _sealing_keys() -> list[bytes]:
    from django.conf import settings

    # One Fernet key per SECRET_KEY (current first, then fallbacks), so a
    # rotated SECRET_KEY listed in SECRET_KEY_FALLBACKS still opens old seals.
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [
        base64.urlsafe_b64encode(hmac.new(k.encode(), b"mqadmin.token-secret.v1", hashlib.sha256).digest())
        for k in keys
    ]


def seal_secret(secret: str) -> str:
    """Encrypt a token secret for storage (Fernet, key derived from SECRET_KEY)."""
    from cryptography.fernet import Fernet

    return Fernet(_sealing_keys()[0]).encrypt(secret.encode()).decode()


def open_secret(sealed: str) -> str | None:
    """The secret inside a seal, or None when no current or fallback SECRET_KEY opens it."""
    from cryptography.fernet import Fernet, InvalidToken, MultiFernet

    try:
        return MultiFernet([Fernet(k) for k in _sealing_keys()]).decrypt(sealed.encode()).decode()
    except InvalidToken:
        return None


# last_used_at is written at most this often per token (not on every request).
LAST_USED_RESOLUTION_SECONDS = 60.0


class TokenQuerySet(models.QuerySet["Token"]):
    def active(self) -> TokenQuerySet:
        """Tokens that were not revoked."""
        return self.filter(revoked_at__isnull=True)


class Token(models.Model):
    name = models.CharField(max_length=100, unique=True)
    key_id = models.CharField(max_length=40, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    # AWS Signature V4 (the SQS endpoint) signs with the secret itself, which
    # the hash above cannot check: keep it too, encrypted (seal_secret).
    # Empty for tokens issued before SigV4 support: they cannot sign.
    secret_sealed = models.TextField(null=True, blank=True, editable=False)
    scopes = models.CharField(max_length=100, help_text="Comma-separated: produce,consume,admin")
    queue_pattern = models.CharField(
        max_length=200, default="*", help_text="Glob of queue names this token may use."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id})"

    def revoke(self) -> bool:
        """Revoke the token now. False when it was already revoked: of two
        racing revokes one wins, and the time it was revoked stays the
        first. A process that verified it lately trusts it a few seconds
        longer (``api.auth.TOKEN_CACHE_SECONDS``) unless told to forget it
        (``api.auth.forget``)."""
        now = timezone.now()
        if not Token.objects.active().filter(pk=self.pk).update(revoked_at=now):
            return False
        self.revoked_at = now
        return True

    def touch(self, now: dt.datetime | None = None) -> None:
        """Note a use in ``last_used_at``: written when the last note is
        older than LAST_USED_RESOLUTION_SECONDS, so not on every request."""
        now = timezone.now() if now is None else now
        last = self.last_used_at
        if last is None or (now - last).total_seconds() > LAST_USED_RESOLUTION_SECONDS:
            Token.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split(",") if s)

    @classmethod
    def issue(cls, name: str, scopes: list[str], queue_pattern: str = "*") -> tuple[Token, str]:
        """Create a token; returns it with the full ``<key id>.<secret>`` string,
        which is never stored and cannot be shown again."""
        key_id = "mq" + secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        token = cls.objects.create(
            name=name,
            key_id=key_id,
            secret_hash=hash_secret(secret),
            secret_sealed=seal_secret(secret),
            scopes=",".join(sorted(set(scopes))),
            queue_pattern=queue_pattern,
        )
        return token, f"{key_id}.{secret}"

    def check_secret(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))

    def signing_secret(self) -> str | None:
        """The secret for verifying request signatures (SigV4), or None."""
        return open_secret(self.secret_sealed) if self.secret_sealed else None

    def allows(self, scope: str, queue_name: str | None = None) -> bool:
        scopes = self.scope_set
        # admin is the operator's scope: it may do everything the others may.
        if scope not in scopes and Scope.ADMIN not in scopes:
            return False
        return queue_name is None or fnmatchcase(queue_name, self.queue_pattern)

    def sees(self, queue_name: str) -> bool:
        return fnmatchcase(queue_name, self.queue_pattern)


# --------------------------------------------------------------------------- #
# Django tasks (queues.tasks.MQBackend)
# --------------------------------------------------------------------------- #
