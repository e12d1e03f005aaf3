"""The operator pages: staff only, CSRF-protected actions through the broker,
a message browser that escapes what producers sent."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard import publisher
from queues import broker, events

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user("op", password="pw-123456", is_staff=True))
    return client


def make_queue(name: str, **config: object) -> broker.Queue:
    return broker.put_queue(name, dict(config))[0]


def send(queue: broker.Queue, *bodies: bytes) -> None:
    broker.publish(queue, [broker.NewMessage(body=b) for b in bodies])


@pytest.mark.parametrize("path", ["/", "/queues/orders/"])
def test_pages_send_anonymous_visitors_to_the_login(path):
    make_queue("orders")
    r = Client().get(path)
    assert r.status_code == 302
    assert r["Location"].startswith("/admin/login/")


def test_pages_refuse_non_staff_users():
    client = Client()
    client.force_login(get_user_model().objects.create_user("viewer", password="pw-123456"))
    make_queue("orders")
    assert client.get("/queues/orders/").status_code == 302
    assert client.post("/queues/orders/purge", {"confirm": "orders"}).status_code == 302


def test_overview_page_loads_the_live_script_and_uplot_from_static(staff):
    r = staff.get("/")
    assert r.status_code == 200
    html = r.content.decode()
    assert "/static/vendor/uplot/uPlot.iife.min.js" in html
    assert "/static/dashboard/dashboard.js" in html


def test_unknown_queue_page_is_404(staff):
    assert staff.get("/queues/nope/").status_code == 404


def test_message_browser_escapes_and_pretty_prints_bodies(staff):
    queue = make_queue("orders")
    send(queue, b'{"note": "<script>alert(1)</script>", "n": 1}')
    html = staff.get("/queues/orders/").content.decode()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '{\n  &quot;note&quot;' in html  # indented, one key a line


def test_message_browser_pages_with_a_cursor(staff):
    queue = make_queue("orders")
    send(queue, *[b'{"n": %d}' % i for i in range(60)])
    first = staff.get("/queues/orders/")
    ids = [m["d"]["id"] for m in first.context["messages_page"]]
    assert len(ids) == 50
    nxt = first.context["next_query"]
    assert nxt["after"] == int(ids[-1])
    second = staff.get("/queues/orders/", {"state": "ready", "after": nxt["after"]})
    rest = [m["d"]["id"] for m in second.context["messages_page"]]
    assert len(rest) == 10 and not set(rest) & set(ids)
    assert second.context["next_query"] is None
    newest = staff.get("/queues/orders/", {"order": "newest"}).context["messages_page"]
    assert int(newest[0]["d"]["id"]) > int(newest[1]["d"]["id"])


def test_message_browser_filters_by_group_and_ignores_a_bad_cursor(staff):
    queue = make_queue("orders", fifo=True)
    broker.publish(queue, [broker.NewMessage(body=b"1", group="table-1"), broker.NewMessage(body=b"2", group="table-2")])
    page = staff.get("/queues/orders/", {"group": "table-2", "after": "12abc", "state": "bogus"})
    assert page.status_code == 200
    assert [m["d"]["group"] for m in page.context["messages_page"]] == ["table-2"]


def test_pause_and_resume_go_through_the_broker_and_are_announced(staff, django_capture_on_commit_callbacks):
    make_queue("orders")
    events.drain()
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post("/queues/orders/pause").status_code == 302
    assert broker.get_queue("orders").paused is True
    with django_capture_on_commit_callbacks(execute=True):
        staff.post("/queues/orders/resume")
    assert broker.get_queue("orders").paused is False
    assert [(e["kind"], e["queue"], e["by"]) for e in events.drain()] == [("pause", "orders", "op"), ("resume", "orders", "op")]


def test_purge_needs_the_queue_name_typed_to_confirm(staff):
    queue = make_queue("orders")
    send(queue, b"1", b"2")
    staff.post("/queues/orders/purge", {"confirm": "order"})
    assert broker.queue_counts([queue.id])[queue.id].ready == 2
    r = staff.post("/queues/orders/purge", {"confirm": "orders"}, follow=True)
    assert broker.queue_counts([queue.id])[queue.id].ready == 0
    assert "Purged 2 messages from orders." in r.content.decode()


def test_redrive_moves_dead_messages_back(staff):
    dlq = make_queue("orders.dlq")
    queue = make_queue("orders", max_deliveries=1, dead_letter_queue="orders.dlq")
    send(queue, b"1")
    broker.receive(queue, visibility_timeout=1)
    import time

    broker.expire_leases(now=time.time() + 5)
    assert broker.queue_counts([dlq.id])[dlq.id].ready == 1
    staff.post("/queues/orders.dlq/redrive")
    assert broker.queue_counts([queue.id])[queue.id].ready == 1


def test_actions_refuse_a_post_without_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_user("op", password="pw-123456", is_staff=True))
    make_queue("orders")
    assert client.post("/queues/orders/pause").status_code == 403
    assert broker.get_queue("orders").paused is False


def test_actions_refuse_get(staff):
    make_queue("orders")
    assert staff.get("/queues/orders/pause").status_code == 405


def test_the_dashboard_shows_a_consumer_that_left_as_left_until_the_forget_window(settings):
    settings.MQ_CONSUMER_FORGET_SECONDS = 60
    make_queue("orders")
    chef = broker.register_consumer("chef-1", ["orders"], {}, None)
    broker.leave(chef.pk)
    snap = publisher.snapshot()
    assert [(c["name"], c["status"]) for c in snap["consumers"]] == [("chef-1", "left")]
    aggregator = publisher.Aggregator()
    assert [f["status"] for f in aggregator.consumer_frames(time.time())] == ["left"]
    later = time.time() + 61
    assert publisher.snapshot(now=later)["consumers"] == []
    assert aggregator.consumer_frames(later) == [{"type": "consumer_removed", "id": chef.pk}]


def test_pages_link_a_favicon_and_favicon_ico_leads_to_it(staff):
    html = staff.get("/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    assert '<link rel="icon" href="/static/favicon.svg"' in Client().get("/admin/login/").content.decode()
    r = Client().get("/favicon.ico")
    assert (r.status_code, r["Location"]) == (301, "/static/favicon.svg")
