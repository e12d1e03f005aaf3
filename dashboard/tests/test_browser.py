"""The dashboard in a real headless Chromium against a real `mq serve`:
log in, watch a count change live after an API send, see a redelivery in the
feed; with 80-character names every count and state stays in view, on the
dashboard and in the admin's lists. Screenshots go to screenshots/
(git-ignored) and to the temporary directory (ui-*.png) for a person to look at."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model

from mqtools.procs import serving
from queues.models import Token
from queues.tests.live import ROOT, free_port, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def serve(port: int) -> Iterator[str]:
    """`mq serve` on a given port (so it can be restarted on the same one)."""
    with serving(subprocess_env(MQ_MONITOR="on"), port) as url:
        yield url


def in_thread(fn: Callable[[], object]) -> object:
    """Run ORM code off the main thread (Playwright's sync API keeps an event
    loop there, where Django refuses synchronous queries)."""
    from django.db import connection

    def run() -> object:
        try:
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result(30)


def need_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing (apt-get install -y chromium): the browser test cannot run"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def open_dashboard(browser: Any, url: str) -> Any:
    """A 1440x900 page logged in as the operator, its live connection up."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{url}/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "a-long-operator-password")
    page.click("input[type=submit]")
    expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
    return page


@pytest.mark.django_db(transaction=True)
def test_operator_watches_counts_and_redeliveries_live_in_a_browser(tapi):
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(exist_ok=True)
    get_user_model().objects.create_user("operator", password="a-long-operator-password", is_staff=True)
    tapi.make_queue("orders", visibility_timeout=1)
    tapi.make_queue("billing")
    tapi.send("billing", {"invoice": 1})
    port = free_port()
    with ExitStack() as server, sync_playwright() as pw:
        url = server.enter_context(serve(port))
        api = httpx.Client(base_url=f"{url}/api/v1/", headers=tapi.headers, timeout=10)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = open_dashboard(browser, url)
            ready = page.locator('#queues tr[data-name="orders"] td.ready')
            expect(ready).to_have_text("0")

            sent = api.post("queues/orders/messages", json={"messages": [{"body": {"pizza": p}} for p in ("margherita", "diavola", "<b>funghi</b>")]})
            assert sent.status_code == 201, sent.text
            expect(ready).to_have_text("3", timeout=10_000)  # pushed, no reload

            leased = api.post("queues/orders/receive", json={"max": 1, "visibility_timeout": 1})
            (message,) = leased.json()["messages"]
            feed = page.locator("#feed li", has_text=f"Message {message['id']} in orders redelivered")
            expect(feed).to_be_visible(timeout=15_000)
            expect(page.locator('#queues tr[data-name="orders"] td.in_flight')).to_have_text("0", timeout=10_000)

            # A chef takes an order and goes silent: it turns dead, its order is redelivered.
            chef = api.post("consumers", json={"name": "chef-1", "queues": ["orders"], "heartbeat_timeout": 2}).json()
            taken = api.post("queues/orders/receive", json={"max": 1, "visibility_timeout": 300, "consumer": chef["id"]})
            (order,) = taken.json()["messages"]
            dead_row = page.locator("#consumers tr.consumer-dead", has_text="chef-1")
            expect(dead_row).to_be_visible(timeout=15_000)
            expect(page.locator("#feed li", has_text="Consumer chef-1 declared dead")).to_be_visible(timeout=10_000)
            lost = page.locator("#feed li", has_text=f"Message {order['id']} in orders redelivered").filter(has_text="lost by chef-1")
            expect(lost).to_be_visible(timeout=10_000)
            page.wait_for_timeout(1500)  # a few chart points
            page.screenshot(path=str(SHOTS / "dashboard-overview.png"), full_page=True)

            page.click('#queues tr[data-name="orders"] a')
            expect(page.locator("h1")).to_contain_text("orders")
            expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
            # Bodies are shown as escaped, pretty-printed JSON, never as markup.
            expect(page.locator("pre.body", has_text="<b>funghi</b>")).to_be_visible()
            assert page.locator("#messages b").count() == 0
            page.screenshot(path=str(SHOTS / "dashboard-queue.png"), full_page=True)

            # The server restarts: the page says so, reconnects by itself and
            # shows what changed meanwhile from a fresh snapshot.
            server.close()
            expect(page.locator("#conn")).to_have_class("conn offline", timeout=10_000)
            expect(page.locator("#conn")).to_contain_text("retrying in")
            page.screenshot(path=str(SHOTS / "dashboard-offline.png"))
            from queues import broker

            in_thread(lambda: broker.publish(broker.get_queue("orders"), [broker.NewMessage(body=b"{}")] * 2))
            server.enter_context(serve(port))
            expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
            expect(page.locator('[data-q="ready"]')).to_have_text("5")
            server.close()
        finally:
            browser.close()
            api.close()


# Screenshots a person looks at when the layout changes; outside the repository.
LAYOUT_SHOTS = Path(tempfile.gettempdir())
LONG_QUEUE = "q" + "_very_long_queue_name" * 3 + "_" + "x" * 15  # 80 characters, no break
LONG_CONSUMER = "c" + "_very_long_consumer_name" * 3 + "_" + "y" * 6  # 80 characters, no break


def inside(cell: Any, ancestor: str) -> None:
    """The cell is drawn whole inside its ancestor (a scroll container, a
    cell) and the viewport: not cut off, not behind a sideways scroll.
    Measured in one go: the consumer rows are redrawn every second, and a
    cell found just before a redraw is measured detached (then again)."""
    for _ in range(20):
        box = cell.evaluate(
            """(e, sel) => {
                const outer = e.isConnected ? e.closest(sel) : null;
                if (!outer) return null;
                const r = e.getBoundingClientRect(), o = outer.getBoundingClientRect();
                return {left: r.left, right: r.right, outerLeft: o.left, outerRight: o.right, viewport: innerWidth};
            }""",
            ancestor,
        )
        if box is not None:
            break
        time.sleep(0.05)
    assert box is not None, f"{cell} never found inside {ancestor}"
    assert box["outerLeft"] - 1 <= box["left"] and box["right"] <= min(box["outerRight"], box["viewport"]) + 1, (cell, box)


@pytest.mark.django_db(transaction=True)
def test_long_names_never_push_counts_or_state_off_the_overview(tapi):
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    assert len(LONG_QUEUE) == len(LONG_CONSUMER) == 80
    get_user_model().objects.create_superuser("operator", password="a-long-operator-password")
    tapi.make_queue(LONG_QUEUE, paused=True)
    tapi.make_queue("orders", max_deliveries=1, dead_letter_queue=LONG_QUEUE)
    tapi.send(LONG_QUEUE, {"n": 1}, {"n": 2})
    tapi.send("orders", {"note": "<b>not bold</b> " + "and a long body " * 40})
    (leased,) = tapi.receive("orders")
    reason = "Traceback (most recent call last): " + "a long error that goes on " * 20
    assert tapi.post("queues/orders/nack", {"receipts": [leased["receipt"]], "reason": reason}).status_code == 200
    Token.issue(LONG_QUEUE[:60] + "-reader", ["consume"], LONG_QUEUE)
    with ExitStack() as server, sync_playwright() as pw:
        url = server.enter_context(serve(free_port()))
        api = httpx.Client(base_url=f"{url}/api/v1/", headers=tapi.headers, timeout=10)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for name in (LONG_CONSUMER, "chef-1"):
                made = api.post("consumers", json={"name": name, "queues": [LONG_QUEUE, "orders"], "heartbeat_timeout": 60})
                assert made.status_code == 201, made.text
            page = open_dashboard(browser, url)
            row = page.locator(f'#queues tr[data-name="{LONG_QUEUE}"]')
            expect(row.locator("td.ready")).to_have_text("3")  # one dead-lettered from orders
            consumer = page.locator("#consumers tr", has_text=LONG_CONSUMER[:20])
            expect(consumer).to_be_visible()
            page.wait_for_timeout(2500)  # a few chart points
            for width, height in ((1440, 900), (1024, 768)):
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(300)
                page.screenshot(path=str(LAYOUT_SHOTS / f"ui-overview-{width}.png"), full_page=True)
                name = row.locator("td.name")
                assert name.get_attribute("title") == LONG_QUEUE
                for col in ("ready", "delayed", "in_flight", "dead", "oldest", "in_rate", "out_rate", "paused"):
                    inside(row.locator(f"td.{col}"), "#queues-scroll")
                for th in page.locator("#queues th").all():
                    inside(th, "#queues-scroll")
                badge = row.locator("td.paused .badge.paused")
                expect(badge).to_be_visible()
                inside(badge, "td")
                assert LONG_CONSUMER in (consumer.locator("td.name").get_attribute("title") or "")
                for cell in consumer.locator("td").all()[1:] + page.locator("#consumers th").all():
                    inside(cell, ".scroll")
                inside(consumer.locator("td .badge"), "td")
            icon = page.request.get(f"{url}/favicon.ico")
            assert icon.ok and icon.headers["content-type"].startswith("image/svg+xml"), icon
            # Without hovering, legends show the newest point; ticks are one line each.
            page.set_viewport_size({"width": 1440, "height": 900})
            for chart in ("#chart-depth", "#chart-rate"):
                values = page.locator(f"{chart} .u-legend .u-series:not(:first-child) .u-value").all_inner_texts()
                assert values and "--" not in values, values
                ticks = page.evaluate(f"document.querySelector('{chart}').uplot.axes[0]._values")
                assert ticks and not any("\n" in t for t in ticks), ticks

            # The admin's lists, the nav sidebar open: long names, bodies and
            # errors cut; every column up to the last (state, actions) in view
            # at 1440 px, with no sideways scroll of the page or the list.
            for path, filters in (
                ("/admin/queues/message/", 2),
                ("/admin/queues/queue/", 0),
                ("/admin/queues/consumer/", 0),
                ("/admin/queues/token/", 0),
            ):
                page.goto(f"{url}{path}")
                expect(page.locator("#nav-sidebar")).to_be_visible()
                page.screenshot(path=str(LAYOUT_SHOTS / f"ui-admin-{path.split('/')[-2]}.png"))
                assert page.locator("#result_list tbody tr").count() >= 2, path
                for row in page.locator("#result_list thead tr, #result_list tbody tr").all():
                    last = row.locator("th, td").last
                    inside(last, ".results")
                    inside(last, "#content")
                # No column squeezed to nothing to make room, nothing to scroll.
                widths = page.locator("#result_list thead th").evaluate_all("ths => ths.map(th => th.offsetWidth)")
                assert min(widths) >= 24, (path, widths)
                assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), path
                assert page.locator(".results").evaluate("e => e.scrollWidth <= e.clientWidth"), path
                long_cell = page.locator(f'#result_list .mq-name[title^="{LONG_QUEUE[:40]}"]').first
                expect(long_cell).to_be_visible()
                inside(long_cell, "td, th")
                links = page.locator(f'#changelist-filter a[title="{LONG_QUEUE}"]')
                expect(links).to_have_count(filters)
                for link in links.all():
                    box = link.bounding_box()
                    assert box is not None and box["height"] < 24, box  # one line, not several
        finally:
            browser.close()
            api.close()
