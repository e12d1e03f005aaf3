"""The token admin: a token's secret is shown once, at creation; a revoked
token is refused by the API."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.admin.models import LogEntry
from django.urls import reverse

from queues.models import Token

from .helpers import act, logged, page_text


def test_token_is_shown_once_at_creation_and_never_again(admin_client: Any) -> None:
    response = admin_client.post(
        reverse("admin:queues_token_add"), {"name": "ci", "scope_choices": ["produce", "consume"], "queue_pattern": "jobs-*"}
    )
    assert response.status_code == 200
    token = Token.objects.get(name="ci")
    raw = re.search(r'class="mq-token"[^>]*>([^<]+)<', response.content.decode())[1]
    key_id, secret = raw.split(".", 1)
    assert key_id == token.key_id and token.check_secret(secret)
    assert (token.scopes, token.queue_pattern) == ("consume,produce", "jobs-*")
    assert "no-store" in response["Cache-Control"]
    for url in (reverse("admin:queues_token_changelist"), reverse("admin:queues_token_change", args=[token.pk])):
        html = admin_client.get(url).content.decode()
        assert token.key_id in html
        assert secret not in html and token.secret_hash not in html
    assert LogEntry.objects.filter(object_id=str(token.pk)).exists()


def test_revoked_token_is_refused_by_the_api(admin_client: Any) -> None:
    from conftest import Api
    from queues.api.auth import forget

    forget()
    _token, raw = Token.issue("svc", ["admin"])
    api = Api(raw)
    assert api.get("queues").status_code == 200
    response = act(admin_client, "token", "revoke", [_token.pk])
    assert "Revoked svc." in page_text(response)
    assert api.get("queues").status_code == 401
    assert logged()[-1].object_id == str(_token.pk)


def test_token_list_cuts_long_names_and_patterns_with_a_tooltip(admin_client: Any) -> None:
    name, pattern = "t-" + "n" * 98, "q-" + "n" * 78
    Token.issue(name, ["produce", "consume"], pattern)
    html = admin_client.get(reverse("admin:queues_token_changelist")).content.decode()
    for text in (name, pattern):
        assert f'<span class="mq-name" title="{text}">{text}</span>' in html
    assert "consume, produce" in html  # scopes wrap between names, not inside one
