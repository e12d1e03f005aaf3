"""Helpers for the admin tests: run an action as the change list posts it,
read the page, the events and the audit log."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.test import TestCase
from django.urls import reverse

from queues import broker, events
from queues.models import Consumer, Queue

CHANGELIST = "admin:queues_message_changelist"


def act(client: Any, model: str, action: str, ids: list[Any], **extra: Any) -> Any:
    """Run an admin action on the given ids, as the changelist form posts it."""
    data = {"action": action, "_selected_action": [str(i) for i in ids], **extra}
    # Events are recorded on commit: run the callbacks the test's
    # transaction would otherwise hold back.
    with TestCase.captureOnCommitCallbacks(execute=True):
        return client.post(reverse(f"admin:queues_{model}_changelist"), data, follow=True)


def confirm(client: Any, model: str, action: str, ids: list[Any], **extra: Any) -> Any:
    return act(client, model, action, ids, post="yes", **extra)


def drained(kind: str) -> list[dict[str, Any]]:
    return [e for e in events.drain() if e["kind"] == kind]


def logged(action_flag: int = CHANGE) -> list[LogEntry]:
    return list(LogEntry.objects.filter(action_flag=action_flag).order_by("id"))


def page_text(response: Any) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def lease(queue: Queue, consumer: Consumer | None = None) -> broker.Delivery:
    (delivery,) = broker.receive(queue, consumer_id=consumer.pk if consumer else None)
    return delivery
