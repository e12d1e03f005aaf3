"""What several model admins share: times for humans, the confirmation page
an action shows before it acts, and the audit log entry it leaves."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString


def when(epoch: float | None) -> str:
    """An epoch time as UTC plus how long ago (or until), for humans."""
    if epoch is None:
        return "—"
    stamp = dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = epoch - time.time()
    return f"{stamp} ({span(abs(delta))} {'from now' if delta > 0 else 'ago'})"


def span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}\u00a0{unit}"
    return f"{seconds:.0f}\u00a0s"


def clipped(text: str, css: str, *, shown: str | None = None, title_max: int = 2000) -> SafeString:
    """Text that the admin's stylesheet (queues/admin.css) may cut with an
    ellipsis, with the full text (up to ``title_max`` characters) in its
    title. Escaped: names, bodies and errors come from API callers."""
    title = text if len(text) <= title_max else text[:title_max] + "…"
    return format_html('<span class="{}" title="{}">{}</span>', css, title, text if shown is None else shown)


def actor(request: HttpRequest) -> str:
    return request.user.get_username()


def log_changes(request: HttpRequest, objects: Iterable[Any], message: str) -> None:
    LogEntry.objects.log_actions(request.user.pk, list(objects), CHANGE, message)  # type: ignore[arg-type]


def confirm_page(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    action: str,
    title: str,
    summary: str,
    items: list[str],
    button: str,
    form: forms.Form | None = None,
    danger: bool = False,
) -> TemplateResponse:
    """An intermediate page that says what an action will touch; submitting it
    runs the action again with ``post`` set."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "summary": summary,
        "items": items[:100],
        "more_items": max(0, len(items) - 100),
        "button": button,
        "danger": danger,
        "form": form,
        "action": action,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "opts": modeladmin.model._meta,
        "queryset": queryset,
    }
    return TemplateResponse(request, "admin/queues/confirm_action.html", context)


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("post") == "yes"
