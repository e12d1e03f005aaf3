"""The operator pages: the live overview and one page per queue.

Pages are rendered once; live numbers arrive over the websocket. Operator
actions go through the broker and come back as events in the feed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_POST

from queues import broker
from queues.exceptions import MQError, QueueNotFound
from queues.models import QueueCounts
from queues.states import MessageState

PAGE_SIZE = 50
BODY_PREVIEW_CHARS = 20_000  # a huge body is cut in the browser, not in storage
STATES = [s.value for s in MessageState]


@staff_member_required
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/index.html", {"page": "overview"})


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the pages link (the admin's,
    the API docs', a JSON answer's): send them to the icon."""
    return HttpResponsePermanentRedirect(static("favicon.svg"))


def _queue_or_404(name: str) -> Any:
    try:
        return broker.get_queue(name)
    except QueueNotFound as exc:
        raise Http404(exc.message) from None


def _pretty(body: str) -> str:
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False, sort_keys=False)
    except ValueError:
        text = body
    if len(text) > BODY_PREVIEW_CHARS:
        text = text[:BODY_PREVIEW_CHARS] + f"\n… ({len(text) - BODY_PREVIEW_CHARS} more characters)"
    return text


def _clock(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if epoch else ""


def _cursor(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() and len(raw) < 19 else None


@staff_member_required
def queue_detail(request: HttpRequest, name: str) -> HttpResponse:
    queue = _queue_or_404(name)
    counts = broker.queue_counts([queue.id]).get(queue.id)
    config = queue.to_dict(counts) if counts is not None else queue.to_dict(QueueCounts())
    state = request.GET.get("state", MessageState.READY)
    if state not in STATES:
        state = MessageState.READY
    newest = request.GET.get("order") == "newest"
    group = (request.GET.get("group") or "").strip()[:128] or None
    cursor = _cursor(request.GET.get("after"))
    rows = broker.browse(queue, state=state, group=group, newest=newest, limit=PAGE_SIZE + 1, after=cursor)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    browse = {"state": state, "order": "newest" if newest else "oldest", "group": group or ""}
    next_query = None
    if more:
        next_query = {**browse, "after": rows[-1].pk}
    return render(
        request,
        "dashboard/queue.html",
        {
            "page": "queue",
            "queue": queue,
            "config": config,
            "states": STATES,
            "browse": browse,
            "cursor": cursor,
            "next_query": next_query,
            "messages_page": [
                {"m": m, "d": m.to_dict(), "pretty": _pretty(m.body), "enqueued": _clock(m.enqueued_at), "lease": _clock(m.lease_expires_at)}
                for m in rows
            ],
            "dead_letter_sources": list(queue.dead_letter_sources.values_list("name", flat=True)),
        },
    )


def _back(name: str) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("dashboard:queue", args=[name]))


@staff_member_required
@require_POST
def pause(request: HttpRequest, name: str) -> HttpResponse:
    return _set_paused(request, name, True)


@staff_member_required
@require_POST
def resume(request: HttpRequest, name: str) -> HttpResponse:
    return _set_paused(request, name, False)


def _set_paused(request: HttpRequest, name: str, paused: bool) -> HttpResponse:
    queue = _queue_or_404(name)
    (broker.pause if paused else broker.resume)(queue, by=request.user.get_username())
    messages.success(request, f"Queue {queue.name} {'paused: it delivers nothing' if paused else 'resumed'}.")
    return _back(queue.name)


@staff_member_required
@require_POST
def purge(request: HttpRequest, name: str) -> HttpResponse:
    queue = _queue_or_404(name)
    if request.POST.get("confirm") != queue.name:
        messages.error(request, f"Not purged: type the queue name {queue.name!r} to confirm.")
        return _back(queue.name)
    n = broker.purge(queue)
    messages.success(request, f"Purged {n} message{'s' if n != 1 else ''} from {queue.name}.")
    return _back(queue.name)


@staff_member_required
@require_POST
def redrive(request: HttpRequest, name: str) -> HttpResponse:
    queue = _queue_or_404(name)
    try:
        n = broker.redrive(queue)
    except MQError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Redrove {n} message{'s' if n != 1 else ''} from {queue.name}.")
    return _back(queue.name)
