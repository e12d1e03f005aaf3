"""Only staff reach the admin, and only staff run its actions."""

from __future__ import annotations

from typing import Any

import pytest

from queues.models import Message

from ..helpers import make_queue, send
from .helpers import confirm


@pytest.mark.parametrize("url", ["/admin/", "/admin/queues/message/", "/admin/queues/queue/", "/admin/queues/token/add/"])
def test_non_staff_users_are_refused(client: Any, django_user_model: Any, url: str) -> None:
    user = django_user_model.objects.create_user("visitor", password="pw-visitor-1")
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_anonymous_users_are_sent_to_login(client: Any, db: None) -> None:
    response = client.get("/admin/queues/message/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_non_staff_cannot_run_an_action(client: Any, django_user_model: Any) -> None:
    q = make_queue("q")
    (mid,) = send(q, "x")
    client.force_login(django_user_model.objects.create_user("visitor", password="pw-visitor-1"))
    response = confirm(client, "message", "delete_messages", [mid])
    assert "/admin/login/" in response.redirect_chain[-1][0]
    assert Message.objects.filter(pk=mid).exists()
