"""The queue admin: live counts without a count per row, validated
configuration, and pause, resume, purge and redrive that ask first, then act
through the broker, log and announce."""

from __future__ import annotations

import re
from typing import Any

from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from queues import broker
from queues.models import Message, Queue
from queues.states import MessageState as S

from ..helpers import assert_counts_exact, make_queue, send
from .helpers import act, confirm, drained, lease, logged, page_text


def test_queue_list_shows_live_counts_without_a_count_per_row(admin_client: Any) -> None:
    for i in range(8):
        q = make_queue(f"q{i}")
        send(q, *range(i))
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/queues/queue/")
    assert response.status_code == 200
    text = page_text(response)
    assert re.search(r'field-queue_name[^>]*>.*?q7.*?field-ready">7<', text)
    assert not [q for q in queries.captured_queries if "queues_message" in q["sql"] and "COUNT(" in q["sql"].upper()]
    # A handful of queries whatever the number of queues (not one per row).
    assert len(queries.captured_queries) < 15


def test_queue_config_is_edited_with_validation(admin_client: Any) -> None:
    a = make_queue("a")
    b = make_queue("b", dead_letter_queue="a")
    url = reverse("admin:queues_queue_change", args=[a.pk])
    form = {
        "paused": "",
        "visibility_timeout": "45",
        "max_deliveries": "3",
        "dead_letter_queue": str(b.pk),  # a -> b -> a: a loop
        "delay": "0",
        "retention": "",
        "max_message_bytes": "1000",
        "max_depth": "",
    }
    response = admin_client.post(url, form)
    assert response.status_code == 200
    assert "dead-letter cycle: a → b → a" in page_text(response)
    form["dead_letter_queue"] = ""
    form["visibility_timeout"] = "999999"  # over the 12 h limit
    response = admin_client.post(url, form)
    assert response.status_code == 200 and "errorlist" in page_text(response)
    form["visibility_timeout"] = "45"
    form["paused"] = "on"
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = admin_client.post(url, form)
    assert response.status_code == 302
    a.refresh_from_db()
    assert (a.visibility_timeout, a.max_deliveries, a.max_message_bytes, a.paused) == (45, 3, 1000, True)
    assert [e["queue"] for e in drained("pause")] == ["a"]
    assert logged()[-1].object_id == str(a.pk)


def test_queue_created_in_the_admin_has_counters(admin_client: Any) -> None:
    response = admin_client.post(
        reverse("admin:queues_queue_add"),
        {"name": "fresh", "visibility_timeout": "30", "max_deliveries": "5", "delay": "0", "max_message_bytes": "1024"},
    )
    assert response.status_code == 302, page_text(response)
    q = broker.get_queue("fresh")
    send(q, "x")
    assert broker.queue_counts([q.pk])[q.pk].ready == 1


def test_pause_and_resume_ask_first_then_act_log_and_announce(admin_client: Any) -> None:
    q = make_queue("q")
    send(q, 1, 2, 3)
    page = act(admin_client, "queue", "pause_queues", [q.pk])
    assert "stop delivery of 3 waiting messages" in page_text(page)
    assert not Queue.objects.get(pk=q.pk).paused
    response = confirm(admin_client, "queue", "pause_queues", [q.pk])
    assert "Paused q." in page_text(response)
    assert Queue.objects.get(pk=q.pk).paused
    assert broker.receive(broker.get_queue("q")) == []
    assert [e["by"] for e in drained("pause")] == ["admin"]
    confirm(admin_client, "queue", "resume_queues", [q.pk])
    assert not Queue.objects.get(pk=q.pk).paused
    assert drained("resume")
    assert len(logged()) == 2


def test_purge_confirmation_says_how_many_then_purges(admin_client: Any) -> None:
    q = make_queue("q")
    send(q, *range(5))
    lease(q)
    page = act(admin_client, "queue", "purge_queues", [q.pk])
    assert "delete 5 messages" in page_text(page)
    assert Message.objects.filter(queue=q).count() == 5
    response = confirm(admin_client, "queue", "purge_queues", [q.pk])
    assert "Purged q: 5 messages." in page_text(response)
    assert not Message.objects.filter(queue=q).exists()
    assert_counts_exact(q)
    assert drained("purge")[0]["count"] == 5
    assert logged()[-1].object_repr == "q"


def test_redrive_confirmation_counts_then_sends_messages_home(admin_client: Any) -> None:
    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue="dlq", max_deliveries=1)
    send(q, "a", "b")
    for _ in range(2):
        d = lease(q)
        broker.nack(q, [d.receipt])
    assert Message.objects.filter(queue=dlq).count() == 2
    page = act(admin_client, "queue", "redrive_queues", [dlq.pk])
    assert "send 2 dead messages back" in page_text(page)
    confirm(admin_client, "queue", "redrive_queues", [dlq.pk])
    assert Message.objects.filter(queue=q, state=S.READY).count() == 2
    assert_counts_exact(q, dlq)
    assert drained("redrive")[0]["count"] == 2


def test_queue_list_cuts_long_names_with_a_tooltip(admin_client: Any) -> None:
    dlq = "d-" + "n" * 78
    make_queue(dlq)
    make_queue("q-" + "n" * 78, dead_letter_queue=dlq)
    html = admin_client.get(reverse("admin:queues_queue_changelist")).content.decode()
    for name in (dlq, "q-" + "n" * 78):
        assert f'<span class="mq-name" title="{name}">{name}</span>' in html
