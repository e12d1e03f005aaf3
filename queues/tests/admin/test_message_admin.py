"""The message admin: requeue, move, dead-letter and delete go through the
broker, keep counters exact (also racing a consumer's ack), are logged and
announced; pages stay fast on big tables and never render a message body
as HTML."""

from __future__ import annotations

import re
import threading
from typing import Any

import orjson
import pytest
from django.contrib.admin.models import DELETION
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import escape

from queues import broker, events
from queues.admin.messages import BODY_PREVIEW_CHARS, BODY_TITLE_CHARS, COUNT_LIMIT
from queues.models import Message, Queue
from queues.states import MessageState as S

from ..helpers import assert_counts_exact, make_queue, real_counts, send
from .helpers import CHANGELIST, act, confirm, drained, lease, logged, page_text

# ----------------------------------------------------------------- actions --


def test_requeue_brings_a_dead_lettered_message_home_keeping_its_history(admin_client: Any) -> None:
    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue="dlq", max_deliveries=2)
    (mid,) = send(q, {"job": 1})
    for _ in range(2):
        broker.nack(q, [lease(q).receipt], reason="boom")
    msg = Message.objects.get(pk=mid)
    assert (msg.queue_id, msg.origin_queue_id) == (dlq.pk, q.pk)
    assert real_counts(q)["dead"] == 1
    response = act(admin_client, "message", "requeue_now", [mid])
    assert "Requeued 1 message." in page_text(response)
    msg.refresh_from_db()
    assert (msg.queue_id, msg.state, msg.origin_queue_id, msg.last_error) == (q.pk, S.READY, None, "boom")
    assert_counts_exact(q, dlq)
    assert broker.queue_counts([q.pk])[q.pk].dead == 0
    (event,) = drained("requeue")
    assert (event["queue"], event["message"], event["by"]) == ("q", mid, "admin")
    (entry,) = logged()
    assert (entry.object_id, entry.user.username) == (mid, "admin")
    # ...and it can now be processed.
    d = lease(q)
    assert d.id == int(mid)
    assert broker.ack(q, [d.receipt]).done == [mid]
    assert_counts_exact(q, dlq)


def test_requeue_makes_dead_and_delayed_messages_ready_and_keeps_delivery_count(admin_client: Any) -> None:
    q = make_queue("q", max_deliveries=1)
    (dead_id,) = send(q, "dies")
    broker.nack(q, [lease(q).receipt])
    (delayed_id,) = send(q, "later", delay=3600)
    (ready_id,) = send(q, "ready")
    assert Message.objects.get(pk=dead_id).state == S.DEAD
    response = act(admin_client, "message", "requeue_now", [dead_id, delayed_id, ready_id])
    assert "Requeued 2 messages (1 already ready, left alone)." in page_text(response)
    states = dict(Message.objects.values_list("id", "state"))
    assert states == {int(dead_id): S.READY, int(delayed_id): S.READY, int(ready_id): S.READY}
    assert Message.objects.get(pk=dead_id).delivery_count == 1
    assert_counts_exact(q)


def test_requeue_while_a_consumer_holds_it_makes_that_consumers_ack_stale(admin_client: Any) -> None:
    q = make_queue("q")
    consumer = broker.register_consumer("worker", ["q"], {}, None)
    (mid,) = send(q, "work")
    held = lease(q, consumer)
    act(admin_client, "message", "requeue_now", [mid])
    msg = Message.objects.get(pk=mid)
    assert (msg.state, msg.lease_token, msg.consumer_id, msg.delivery_count) == (S.READY, None, None, 1)
    assert broker.ack(q, [held.receipt]).stale == [held.receipt]
    assert broker.nack(q, [held.receipt]).stale == [held.receipt]
    again = lease(q)
    assert (again.id, again.delivery_count) == (int(mid), 2)
    assert broker.ack(q, [again.receipt]).done == [mid]
    assert_counts_exact(q)


@pytest.mark.django_db(transaction=True)
def test_requeue_racing_the_holders_ack_leaves_exactly_one_winner(admin_client: Any) -> None:
    """Real threads: the holder acks while the operator requeues. Either the
    ack lands first (message gone, requeue finds nothing) or the requeue does
    (message ready again, ack stale) — never both, never a lost count."""
    q = make_queue("q")
    outcomes = []

    def holder(barrier: threading.Barrier, receipt: str, result: dict[str, Any]) -> None:
        try:
            barrier.wait()
            result["ack"] = broker.ack(q, [receipt])
        finally:
            connections.close_all()

    for round_ in range(6):
        (mid,) = send(q, round_)
        held = lease(q)
        barrier = threading.Barrier(2)
        result: dict[str, Any] = {}
        thread = threading.Thread(target=holder, args=(barrier, held.receipt, result))
        thread.start()
        barrier.wait()
        requeued = broker.requeue([mid], by="admin")
        thread.join(30)
        assert not thread.is_alive()
        acked = result["ack"].done == [mid]
        assert acked != (requeued == 1)
        assert Message.objects.filter(pk=mid).exists() == (not acked)
        if not acked:
            assert broker.ack(q, [held.receipt]).stale == [held.receipt]
            broker.ack(q, [lease(q).receipt])
        outcomes.append(acked)
        assert_counts_exact(q)
    assert real_counts(q) == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


def test_move_sends_messages_to_another_queue_and_fences_leases(admin_client: Any) -> None:
    dlq = make_queue("dlq")
    a = make_queue("a", dead_letter_queue="dlq", max_deliveries=1)
    b = make_queue("b")
    ids = send(a, 1, 2, 3)
    later = send(a, 4, delay=600)
    held = lease(a)
    broker.nack(a, [lease(a).receipt])  # -> dlq, dead-lettered out of a
    page = act(admin_client, "message", "move_to_queue", [*ids, *later])
    assert "Move to queue" in page_text(page)
    response = confirm(admin_client, "message", "move_to_queue", [*ids, *later], target=str(b.pk))
    assert "Moved 4 messages to b." in page_text(response)
    assert Message.objects.filter(queue=b).count() == 4
    assert Message.objects.get(pk=later[0]).state == S.DELAYED
    assert broker.ack(a, [held.receipt]).stale
    assert_counts_exact(a, b, dlq)
    assert broker.queue_counts([a.pk])[a.pk].dead == 0
    assert {e["from_queue"] for e in drained("requeue")} == {"a", "dlq"}
    assert len(logged()) == 4


def test_dead_letter_action_moves_to_the_dead_letter_queue_with_the_reason(admin_client: Any) -> None:
    dlq = make_queue("dlq")
    q = make_queue("q", dead_letter_queue="dlq")
    plain = make_queue("plain")
    a, b = send(q, "a", "b")
    (c,) = send(plain, "c", delay=60)
    held = lease(q)
    page = act(admin_client, "message", "dead_letter", [a, b, c])
    assert "Reason" in page_text(page)
    response = confirm(admin_client, "message", "dead_letter", [a, b, c], reason="poison pill")
    assert "Dead-lettered 3 messages." in page_text(response)
    assert set(Message.objects.filter(queue=dlq).values_list("last_error", flat=True)) == {"poison pill"}
    assert Message.objects.get(pk=c).state == S.DEAD
    assert broker.ack(q, [held.receipt]).stale
    assert_counts_exact(q, dlq, plain)
    assert broker.queue_counts([q.pk])[q.pk].dead == 2
    assert len(drained("dead_letter")) == 3


def test_delete_action_asks_then_deletes_and_logs_deletions(admin_client: Any) -> None:
    q = make_queue("q")
    ids = send(q, 1, 2, 3)
    held = lease(q)
    page = act(admin_client, "message", "delete_messages", ids[:2])
    assert "This deletes 2 messages for good" in page_text(page)
    assert Message.objects.count() == 3
    response = confirm(admin_client, "message", "delete_messages", ids[:2])
    assert "Deleted 2 messages." in page_text(response)
    assert list(Message.objects.values_list("id", flat=True)) == [int(ids[2])]
    assert broker.ack(q, [held.receipt]).stale
    assert_counts_exact(q)
    assert sorted(e.object_id for e in logged(DELETION)) == sorted(ids[:2])
    assert drained("purge")[0]["count"] == 2


def test_select_all_across_pages_acts_on_the_filtered_set(admin_client: Any) -> None:
    q = make_queue("q")
    other = make_queue("other")
    send(q, *range(150))
    send(other, "keep")
    url = reverse(CHANGELIST) + f"?queue__id__exact={q.pk}"
    response = admin_client.post(url, {"action": "requeue_now", "_selected_action": ["1"], "select_across": "1"}, follow=True)
    assert response.status_code == 200
    response = admin_client.post(
        url, {"action": "delete_messages", "_selected_action": ["1"], "select_across": "1", "post": "yes"}, follow=True
    )
    assert "Deleted 150 messages." in page_text(response)
    assert Message.objects.count() == 1
    assert_counts_exact(q, other)


def test_event_bodies_are_json(admin_client: Any) -> None:
    """Events must serialize for the dashboard feed."""
    q = make_queue("q")
    ids = send(q, 1)
    act(admin_client, "message", "requeue_now", ids)
    confirm(admin_client, "message", "delete_messages", ids)
    for event in events.drain():
        orjson.dumps(event)


# ------------------------------------------------------------------- pages --


def test_message_page_shows_the_body_escaped_and_pretty(admin_client: Any) -> None:
    q = make_queue("q")
    (mid,) = send(q, {"html": "<script>alert(1)</script>", "n": [1, 2]}, headers={"x-src": "<b>"})
    response = admin_client.get(reverse("admin:queues_message_change", args=[mid]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>" not in html.split('class="mq-json"', 1)[1]
    assert '{\n  &quot;html&quot;: &quot;&lt;script&gt;' in html
    # Read-only: no save button, no inputs for the message's fields.
    assert 'name="_save"' not in html and 'name="state"' not in html


def test_message_page_shows_the_delivery_history(admin_client: Any) -> None:
    q = make_queue("q")
    consumer = broker.register_consumer("worker-7", ["q"], {}, None)
    (mid,) = send(q, "x", group="g1", dedup_id="order-9")
    broker.nack(q, [lease(q, consumer).receipt], reason="db timeout")
    lease(q, consumer)
    text = page_text(admin_client.get(reverse("admin:queues_message_change", args=[mid])))
    for expected in ("db timeout", "g1", "order-9", consumer.pk[:8], "In flight"):
        assert expected in text
    assert re.search(r"field-delivery_count.*?<div class=\"readonly\">2</div>", text)


def test_message_list_filters_and_searches(admin_client: Any) -> None:
    q = make_queue("q")
    other = make_queue("other", max_deliveries=1)
    (grouped,) = send(q, "g", group="orders-1", priority=7)
    (deduped,) = send(q, "d", dedup_id="abc-123")
    (dead,) = send(other, "x")
    broker.nack(other, [lease(other).receipt])
    url = reverse(CHANGELIST)

    def ids(query: str) -> set[str]:
        response = admin_client.get(url + query)
        assert response.status_code == 200, query
        return set(re.findall(r"/admin/queues/message/(\d+)/change/", response.content.decode()))

    assert ids("") == {grouped, deduped, dead}
    assert ids("?state__exact=dead") == {dead}
    assert ids("?priority=7") == {grouped}
    assert ids("?group=orders-1") == {grouped}
    assert ids(f"?queue__id__exact={q.pk}") == {grouped, deduped}
    assert ids("?older_than=60") == set()
    assert ids("?q=abc-123") == {deduped}
    assert ids("?q=orders-1") == {grouped}
    assert ids(f"?q={dead}") == {dead}
    assert ids(f"?dead_of={other.pk}") == {dead}


def test_ready_filter_pages_a_queues_ready_messages_by_id_through_the_claim_index(admin_client: Any) -> None:
    # Ready messages of mixed priorities behind the oldest, in flight: each
    # page's ids come from the claim's index, merged across priorities, not
    # from a walk of the queue's ids.
    q = make_queue("busy")
    for i in range(5):
        send(q, *range(90), priority=(3 * i) % 10)
    broker.receive(q, max_messages=200)
    ready = [str(m.pk) for m in Message.objects.filter(queue=q, state=S.READY).order_by("-id")]
    assert len(ready) == 250
    url = reverse(CHANGELIST) + f"?state__exact=ready&queue__id__exact={q.pk}"
    for query, shown in (("", ready[:100]), ("&p=3", ready[200:]), ("&o=1", ready[::-1][:100]), ("&o=1&p=2", ready[::-1][100:200])):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url + query)
        assert re.findall(r"/admin/queues/message/(\d+)/change/", response.content.decode()) == shown, query
        listing = [x["sql"] for x in queries.captured_queries if '"queues_message"."priority"' in x["sql"]]
        assert listing and all('"queues_message"."id" IN (' in sql for sql in listing), listing
    assert "250 messages" in page_text(response)


def test_message_list_previews_bodies_and_errors_escaped_with_the_full_text_in_a_tooltip(admin_client: Any) -> None:
    q = make_queue("q", max_deliveries=1)
    (short,) = send(q, {"note": "<b>bold</b>", "n": 1})
    (long,) = send(q, {"pad": "z" * 3000})
    error = "Traceback: <script>x</script> " + "e" * 400
    broker.nack(q, [lease(q).receipt], reason=error)
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "<b>bold</b>" not in html and "<script>x</script>" not in html
    body = escape(Message.objects.get(pk=short).body)
    assert "&lt;b&gt;bold&lt;/b&gt;" in body
    assert f'<span class="mq-body" title="{body}">{body}</span>' in html
    # A long body: its first characters, and no more than the tooltip's share of it.
    text = Message.objects.get(pk=long).body
    assert escape(text[:BODY_PREVIEW_CHARS]) + "…</span>" in html
    assert "z" * BODY_TITLE_CHARS not in html and escape(text[:BODY_TITLE_CHARS]) + "…" in html
    # The last error wraps in its cell; all of it is in the tooltip.
    escaped = escape(error)
    assert f'<span class="mq-error" title="{escaped}">{escaped[:150]}' in html
    assert {short, long} <= set(re.findall(r"/admin/queues/message/(\d+)/change/", html))


def test_long_queue_names_in_the_filters_are_cut_with_a_tooltip(admin_client: Any) -> None:
    name = "q-" + "n" * 78
    make_queue("short")  # with one queue the "by queue" filter is not shown
    group = "g-" + "n" * 98
    send(make_queue(name), "x", group=group)
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    link = f'class="mq-name" title="{name}">{name}</a>'
    assert html.count(link) == 2  # "by queue" and "dead messages of"
    assert f'<span class="mq-name" title="{name}">{name}</span>' in html  # the queue column
    assert f'<span class="mq-name" title="{group}">{group}</span>' in html  # the group column
    assert "/static/queues/admin.css" in html


def test_changelist_of_200000_messages_renders_without_a_full_count(admin_client: Any) -> None:
    q = make_queue("big")
    _bulk_insert(q, 200_000)
    url = reverse(CHANGELIST)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url)
        filtered = admin_client.get(url + f"?queue__id__exact={q.pk}&state__exact=ready")
    assert response.status_code == filtered.status_code == 200
    counts = [x["sql"] for x in queries.captured_queries if "COUNT(" in x["sql"].upper() and "queues_message" in x["sql"]]
    assert counts, "the paginator should count (a limited number of rows)"
    for sql in counts:
        assert "LIMIT" in sql.upper(), sql
    text = page_text(response)
    assert f"More than {COUNT_LIMIT} messages match" in text
    assert f"Select all {COUNT_LIMIT + 1}" not in text  # it would name a wrong total
    # Bodies are not loaded for the list, only their beginning for the preview.
    listing = [x["sql"] for x in queries.captured_queries if x["sql"].lstrip().upper().startswith("SELECT") and '"queues_message"."priority"' in x["sql"]]
    head = re.compile(rf'SUBSTR(?:ING)?\("queues_message"\."body", 1, {BODY_TITLE_CHARS + 1}\)', re.IGNORECASE)
    assert listing and all(head.search(sql) and '"queues_message"."body"' not in head.sub("", sql) for sql in listing)
    assert response.context["cl"].paginator.__class__.__name__ == "LimitedCountPaginator"


def _bulk_insert(queue: Queue, n: int) -> None:
    columns = "queue_id, state, priority, body, headers, group_key, delivery_count, enqueued_at, visible_at, last_error"
    select = f"{queue.pk}, 'ready', 0, '{{\"n\": 1}}', '{{}}', '', 0, 1.0e9 + i, 1.0e9 + i, ''"
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(f"INSERT INTO queues_message ({columns}) SELECT {select} FROM generate_series(1, %s) AS i", [n])
        else:
            cur.execute(
                f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) "
                f"INSERT INTO queues_message ({columns}) SELECT {select} FROM s",
                [n],
            )
