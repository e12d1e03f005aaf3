"""The consumer admin: what each consumer holds, and releasing its leases."""

from __future__ import annotations

import re
import time
from typing import Any

from django.urls import reverse

from queues import broker
from queues.models import Consumer, Message
from queues.states import MessageState as S

from ..helpers import assert_counts_exact, make_queue, send
from .helpers import act, drained, logged, page_text


def test_consumer_list_shows_what_each_holds_and_release_frees_it(admin_client: Any) -> None:
    q = make_queue("q")
    worker = broker.register_consumer("worker-1", ["q"], {}, None)
    idle = broker.register_consumer("idle-1", ["q"], {}, None)
    send(q, 1, 2, 3)
    broker.receive(q, max_messages=2, consumer_id=worker.pk)
    text = page_text(admin_client.get(reverse("admin:queues_consumer_changelist")))
    assert re.search(r"worker-1.*?field-in_flight_held\">2<", text)
    assert re.search(r"idle-1.*?field-in_flight_held\">0<", text)
    detail = page_text(admin_client.get(reverse("admin:queues_consumer_change", args=[worker.pk])))
    assert detail.count("delivery 1 · lease expires") == 2
    response = act(admin_client, "consumer", "release_leases", [worker.pk, idle.pk])
    assert "Released 2 leases" in page_text(response)
    assert Message.objects.filter(state=S.READY).count() == 3
    assert_counts_exact(q)
    assert len(drained("redelivery")) == 2
    assert {e.object_id for e in logged()} == {worker.pk, idle.pk}


def test_consumers_gone_from_the_live_lists_stay_in_the_admin(admin_client: Any, settings: Any) -> None:
    settings.MQ_CONSUMER_FORGET_SECONDS = 60
    make_queue("q")
    gone = broker.register_consumer("long-gone-1", ["q"], {}, None)
    broker.leave(gone.pk)
    Consumer.objects.filter(pk=gone.pk).update(dead_at=time.time() - 61)
    assert not Consumer.objects.listed().filter(pk=gone.pk).exists()
    text = page_text(admin_client.get(reverse("admin:queues_consumer_changelist")))
    assert re.search(r"long-gone-1.*?field-status\">Left<", text)


def test_consumer_list_cuts_long_names_and_queue_lists_with_a_tooltip(admin_client: Any) -> None:
    name, queue = "c-" + "n" * 78, "q-" + "n" * 78
    make_queue(queue)
    make_queue("other")
    broker.register_consumer(name, [queue, "other"], {}, None)
    html = admin_client.get(reverse("admin:queues_consumer_changelist")).content.decode()
    for text in (name, f"{queue}, other"):
        assert f'<span class="mq-name" title="{text}">{text}</span>' in html
