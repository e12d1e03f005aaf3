"""The Django admin for operators: inspect queues, messages, consumers and
tokens, and put messages back to work by hand.

Every action calls ``queues.broker`` (the code the API runs), inside one
transaction together with the ``LogEntry`` that records it, and reports with
``message_user``. Messages are never edited or saved through a form: a form
save would write a whole row a receiver may be changing at the same moment.

Large tables stay fast: the message list never counts the whole table (it
counts at most ``COUNT_LIMIT`` rows), never loads bodies, and offers only
filters the indexes serve.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from . import broker
from .api.auth import forget
from .exceptions import InvalidValue
from .models import Consumer, Message, Queue, QueueCounts, Scope, Token
from .states import MessageState as S

# Rows the message list counts at most: beyond this it says "more than".
COUNT_LIMIT = 10_000
# Messages listed on a consumer's page.
HELD_SHOWN = 50

ConfirmAction = Callable[[admin.ModelAdmin, HttpRequest, QuerySet], HttpResponse | None]


def _when(epoch: float | None) -> str:
    """An epoch time as UTC plus how long ago (or until), for humans."""
    if epoch is None:
        return "—"
    stamp = dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    delta = epoch - time.time()
    return f"{stamp} ({_span(abs(delta))} {'from now' if delta > 0 else 'ago'})"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}\u00a0{unit}"
    return f"{seconds:.0f}\u00a0s"


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


def _log(request: HttpRequest, objects: Iterable[Any], message: str) -> None:
    LogEntry.objects.log_actions(request.user.pk, list(objects), CHANGE, message)  # type: ignore[arg-type]


def _confirm(
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


def _counts(queue: Queue) -> QueueCounts:
    return getattr(queue, "counts", None) or QueueCounts()


def _confirmed(request: HttpRequest) -> bool:
    return request.POST.get("post") == "yes"


# --------------------------------------------------------------------------- #
# Paging without counting the whole table
# --------------------------------------------------------------------------- #


class LimitedCountPaginator(Paginator):
    """Counts at most ``COUNT_LIMIT + 1`` rows: ``SELECT COUNT(*) FROM (… LIMIT
    n)`` stops early, where a plain count would read every row of a
    million-message table on each page view."""

    @cached_property
    def count(self) -> int:
        rows: QuerySet = self.object_list  # type: ignore[assignment]
        return rows.order_by().values("pk")[: COUNT_LIMIT + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > COUNT_LIMIT


# --------------------------------------------------------------------------- #
# Queues
# --------------------------------------------------------------------------- #


class QueueChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # Live counts for the whole page in one call (a few indexed queries),
        # not a COUNT per row.
        counts = broker.queue_counts([q.pk for q in self.result_list])
        for queue in self.result_list:
            queue.counts = counts.get(queue.pk, QueueCounts())  # type: ignore[attr-defined]


class QueueForm(forms.ModelForm):
    class Meta:
        model = Queue
        fields = ("name", *broker.QUEUE_FIELDS)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        dlq = data.get("dead_letter_queue")
        name = data.get("name") or self.instance.name
        if dlq is not None:
            # Follow the chain: a loop would pass messages round for ever.
            seen = {name}
            hop: Queue | None = dlq
            while hop is not None:
                if hop.name in seen:
                    self.add_error("dead_letter_queue", f"{dlq.name} leads back to {hop.name}: dead-letter queues must not form a loop.")
                    break
                seen.add(hop.name)
                hop = hop.dead_letter_queue
        return data


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    form = QueueForm
    list_display = (
        "name",
        "status",
        "ready",
        "delayed",
        "in_flight",
        "dead",
        "oldest_ready",
        "dead_letter_queue",
        "visibility_timeout",
        "max_deliveries",
        "fifo",
    )
    list_select_related = ("dead_letter_queue",)
    list_filter = ("paused", "fifo")
    search_fields = ("name",)
    readonly_fields = ("live_counts", "created_at", "updated_at")
    actions = ("pause_queues", "resume_queues", "purge_queues", "redrive_queues")
    fieldsets = (
        (None, {"fields": ("name", "paused", "live_counts")}),
        ("Delivery", {"fields": ("visibility_timeout", "max_deliveries", "dead_letter_queue", "delay", "fifo")}),
        ("Limits", {"fields": ("retention", "max_message_bytes", "max_depth")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return QueueChangeList

    def get_readonly_fields(self, request: HttpRequest, obj: Queue | None = None) -> tuple[str, ...]:
        # The name is the queue's address in the API: renaming would strand producers.
        return (*self.readonly_fields, "name") if obj else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Queue | None = None) -> bool:
        # Deleting a queue deletes its messages; the API and `mq` do it through
        # broker.delete_queue, not the admin's row-by-row collector.
        return False

    def save_model(self, request: HttpRequest, obj: Queue, form: forms.ModelForm, change: bool) -> None:
        config = {f: form.cleaned_data[f] for f in broker.QUEUE_FIELDS if f in form.cleaned_data}
        dlq = config.get("dead_letter_queue")
        config["dead_letter_queue"] = dlq.name if dlq is not None else None
        # Pausing and resuming an existing queue are announced, as the actions are.
        toggle = change and "paused" in form.changed_data
        if toggle:
            config.pop("paused")
        try:
            queue, _created = broker.put_queue(obj.name, config)
        except InvalidValue as e:
            # The form's validation catches these first; a concurrent change
            # (a dead-letter queue deleted meanwhile) can still get here.
            raise forms.ValidationError(str(e)) from e
        if toggle:
            queue = (broker.pause if form.cleaned_data["paused"] else broker.resume)(queue, by=_actor(request))
        obj.pk = queue.pk
        obj.created_at, obj.updated_at = queue.created_at, queue.updated_at

    # -- columns -----------------------------------------------------------

    @admin.display(description="status", ordering="paused")
    def status(self, obj: Queue) -> str:
        return "paused" if obj.paused else "active"

    @admin.display(description="ready")
    def ready(self, obj: Queue) -> int:
        return _counts(obj).ready

    @admin.display(description="delayed")
    def delayed(self, obj: Queue) -> int:
        return _counts(obj).delayed

    @admin.display(description="in flight")
    def in_flight(self, obj: Queue) -> int:
        return _counts(obj).in_flight

    @admin.display(description="dead")
    def dead(self, obj: Queue) -> Any:
        if not _counts(obj).dead:
            return 0
        url = reverse("admin:queues_message_changelist")
        return format_html('<a href="{}?dead_of={}">{}</a>', url, obj.pk, _counts(obj).dead)

    @admin.display(description="oldest ready")
    def oldest_ready(self, obj: Queue) -> str:
        age = _counts(obj).oldest_ready_age
        return "—" if age is None else _span(age)

    @admin.display(description="live counts")
    def live_counts(self, obj: Queue) -> str:
        if obj.pk is None:
            return "—"
        c = broker.queue_counts([obj.pk]).get(obj.pk, QueueCounts())
        age = "—" if c.oldest_ready_age is None else _span(c.oldest_ready_age)
        return f"{c.ready} ready · {c.delayed} delayed · {c.in_flight} in flight · {c.dead} dead · oldest ready {age}"

    # -- actions -----------------------------------------------------------

    def _queue_action(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        *,
        action: str,
        verb: str,
        touched: Callable[[list[Queue]], dict[int, int]],
        run: Callable[[Queue, str], object],
        what: str,
        danger: bool = False,
    ) -> TemplateResponse | None:
        queues = list(queryset.select_related("dead_letter_queue"))
        if not _confirmed(request):
            counts = touched(queues)
            total = sum(counts.values())
            return _confirm(
                self,
                request,
                queryset,
                action=action,
                title=f"{verb.capitalize()} {len(queues)} queue{'s' if len(queues) != 1 else ''}?",
                summary=f"This will {what.format(n=total, s='' if total == 1 else 's')}.",
                items=[f"{q.name}: {counts.get(q.pk, 0)} message{'' if counts.get(q.pk, 0) == 1 else 's'}" for q in queues],
                button=f"Yes, {verb}",
                danger=danger,
            )
        done = 0
        with transaction.atomic():
            for queue in queues:
                result = run(queue, _actor(request))
                done += result if isinstance(result, int) else 0
                self.log_change(request, queue, f"{verb.capitalize()}d through the admin.")
        self._report(request, verb, queues, done)
        return None

    def _report(self, request: HttpRequest, verb: str, queues: list[Queue], done: int) -> None:
        names = ", ".join(q.name for q in queues)
        past = {"pause": "Paused", "resume": "Resumed", "purge": "Purged", "redrive": "Redrove"}[verb]
        if verb in ("pause", "resume"):
            self.message_user(request, f"{past} {names}.", messages.SUCCESS)
        else:
            self.message_user(request, f"{past} {names}: {done} message{'' if done == 1 else 's'}.", messages.SUCCESS)

    @staticmethod
    def _waiting(queues: list[Queue]) -> dict[int, int]:
        counts = broker.queue_counts([q.pk for q in queues])
        return {q.pk: counts[q.pk].ready + counts[q.pk].delayed for q in queues if q.pk in counts}

    @staticmethod
    def _stored(queues: list[Queue]) -> dict[int, int]:
        counts = broker.queue_counts([q.pk for q in queues])
        return {
            q.pk: c.ready + c.delayed + c.in_flight + c.totals.get("dead_state", 0)
            for q in queues
            if (c := counts.get(q.pk)) is not None
        }

    @staticmethod
    def _redrivable(queues: list[Queue]) -> dict[int, int]:
        # Exactly what broker.redrive selects (an indexed count per queue).
        return {
            q.pk: Message.objects.filter(queue=q)
            .filter(Q(state=S.DEAD) | Q(origin_queue__isnull=False, state__in=[S.READY, S.DELAYED]))
            .count()
            for q in queues
        }

    @admin.action(description="Pause delivery from the selected queues", permissions=["change"])
    def pause_queues(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        return self._queue_action(
            request,
            queryset,
            action="pause_queues",
            verb="pause",
            touched=self._waiting,
            run=lambda q, by: broker.pause(q, by=by),
            what="stop delivery of {n} waiting message{s} until the queue is resumed (sends are still accepted)",
        )

    @admin.action(description="Resume delivery from the selected queues", permissions=["change"])
    def resume_queues(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        return self._queue_action(
            request,
            queryset,
            action="resume_queues",
            verb="resume",
            touched=self._waiting,
            run=lambda q, by: broker.resume(q, by=by),
            what="make {n} waiting message{s} deliverable again",
        )

    @admin.action(description="Purge the selected queues (delete every message)", permissions=["change"])
    def purge_queues(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        return self._queue_action(
            request,
            queryset,
            action="purge_queues",
            verb="purge",
            touched=self._stored,
            run=lambda q, by: broker.purge(q),
            what="delete {n} message{s}, leased ones too (their acks become stale). This cannot be undone",
            danger=True,
        )

    @admin.action(description="Redrive dead messages of the selected queues", permissions=["change"])
    def redrive_queues(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        return self._queue_action(
            request,
            queryset,
            action="redrive_queues",
            verb="redrive",
            touched=self._redrivable,
            run=lambda q, by: broker.redrive(q),
            what="send {n} dead message{s} back to the queue they came from, ready, with a fresh delivery count "
            "(messages dead-lettered into a dead-letter queue are redriven from that queue)",
        )


# --------------------------------------------------------------------------- #
# Messages
# --------------------------------------------------------------------------- #


class PriorityFilter(admin.SimpleListFilter):
    """Fixed choices: the default filter would ask for DISTINCT priority over
    the whole table on every page view."""

    title = "priority"
    parameter_name = "priority"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(p), str(p)) for p in range(9, -1, -1)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(priority=int(value)) if value in {str(p) for p in range(10)} else queryset


class GroupFilter(admin.SimpleListFilter):
    """A FIFO group typed in by the operator (listing every group would scan)."""

    title = "group"
    parameter_name = "group"
    template = "admin/queues/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("", "")]  # a filter without lookups is not shown at all

    def has_output(self) -> bool:
        return True

    def choices(self, changelist: ChangeList) -> Iterator[Any]:
        # One entry: the other filters and the search, kept as hidden fields
        # of the group's text box.
        yield {"query_parts": [(k, v) for k, v in changelist.params.items() if k != self.parameter_name]}

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(group_key=self.value()) if self.value() else queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "older_than"
    SPANS = {"60": "older than 1 minute", "3600": "older than 1 hour", "86400": "older than 1 day", "604800": "older than 7 days"}

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(self.SPANS.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None or value not in self.SPANS:
            return queryset
        return queryset.filter(enqueued_at__lte=time.time() - int(value))


class DeadOfFilter(admin.SimpleListFilter):
    """Dead messages of a queue as the API counts them: dead in it, or
    dead-lettered out of it into its dead-letter queue."""

    title = "dead messages of"
    parameter_name = "dead_of"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Queue.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value() or ""
        if not value.isdigit():
            return queryset
        qid = int(value)
        return queryset.filter(Q(queue_id=qid, state=S.DEAD) | Q(origin_queue_id=qid))


class MessageChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        # The list never shows bodies: they can be 256 KiB each.
        return super().get_queryset(request, exclude_parameters).defer("body", "headers")


class MoveForm(forms.Form):
    target = forms.ModelChoiceField(queryset=Queue.objects.order_by("name"), label="Move to queue")


class DeadLetterForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False, label="Reason (kept as the last error)")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "queue_name",
        "state",
        "priority",
        "group",
        "delivery_count",
        "age",
        "held_by",
        "error",
    )
    list_select_related = ("queue", "origin_queue")
    list_filter = ("queue", "state", PriorityFilter, GroupFilter, AgeFilter, DeadOfFilter)
    # The search box takes exact values (served by indexes); get_search_results
    # decides which field a term is. Body text is not searched: neither
    # database can find a substring in millions of bodies without reading them.
    search_fields = ("=dedup_id",)
    search_help_text = "Exact message id, dedup id, group or consumer id. Message bodies are not searched."
    ordering = ("-id",)
    paginator = LimitedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    actions = ("requeue_now", "move_to_queue", "dead_letter", "delete_messages")
    fieldsets = (
        (None, {"fields": ("id", "queue", "state", "priority", "group", "dedup_id", "act_on_it")}),
        ("Timing", {"fields": ("enqueued", "visible", "lease_expires", "dead_at_time")}),
        (
            "Delivery history",
            {"fields": ("delivery_count", "held_by", "origin_queue", "last_error")},
        ),
        ("Content", {"fields": ("pretty_body", "pretty_headers")}),
    )
    readonly_fields = (
        "id",
        "queue",
        "state",
        "priority",
        "group",
        "dedup_id",
        "enqueued",
        "visible",
        "lease_expires",
        "dead_at_time",
        "delivery_count",
        "held_by",
        "origin_queue",
        "last_error",
        "pretty_body",
        "pretty_headers",
        "act_on_it",
    )

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return MessageChangeList

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(dedup_id=term) | Q(group_key=term) | Q(consumer_id=term)
        if term.isdigit() and len(term) <= 18:
            match |= Q(pk=int(term))
        return queryset.filter(match), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        # Actions need the change permission; the page of one message is
        # read-only (operators change messages only through actions).
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False  # the "delete" action goes through the broker instead

    # -- columns and fields -------------------------------------------------

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        message = self.get_object(request, object_id)
        if message is not None:
            extra_context = {**(extra_context or {}), "subtitle": f"Message {message.pk} in {message.queue.name} ({message.get_state_display().lower()})"}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="queue", ordering="queue__name")
    def queue_name(self, obj: Message) -> str:
        # A dead-lettered message names the queue it died in: redrive and
        # requeue send it back there.
        return f"{obj.queue.name} (from {obj.origin_queue.name})" if obj.origin_queue is not None else obj.queue.name

    @admin.display(description="actions")
    def act_on_it(self, obj: Message) -> Any:
        url = reverse("admin:queues_message_changelist")
        return format_html(
            '<a href="{}?q={}">Open it in the message list</a> to requeue, move, dead-letter or delete it.', url, obj.pk
        )

    @admin.display(description="group", ordering="group_key")
    def group(self, obj: Message) -> str:
        return obj.group_key or "—"

    @admin.display(description="age", ordering="enqueued_at")
    def age(self, obj: Message) -> str:
        return _span(max(0.0, time.time() - obj.enqueued_at))

    @admin.display(description="consumer")
    def held_by(self, obj: Message) -> Any:
        if not obj.consumer_id:
            return "—"
        url = reverse("admin:queues_consumer_change", args=[obj.consumer_id])
        return format_html('<a href="{}">{}</a>', url, obj.consumer_id[:8])

    @admin.display(description="last error")
    def error(self, obj: Message) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 60 else text[:59] + "…"

    @admin.display(description="enqueued")
    def enqueued(self, obj: Message) -> str:
        return _when(obj.enqueued_at)

    @admin.display(description="visible at")
    def visible(self, obj: Message) -> str:
        return _when(obj.visible_at) if obj.state == S.DELAYED else "—"

    @admin.display(description="lease expires")
    def lease_expires(self, obj: Message) -> str:
        return _when(obj.lease_expires_at) if obj.state == S.IN_FLIGHT else "—"

    @admin.display(description="dead since")
    def dead_at_time(self, obj: Message) -> str:
        return _when(obj.dead_at)

    @admin.display(description="body")
    def pretty_body(self, obj: Message) -> str:
        return _pretty_json(obj.body)

    @admin.display(description="headers")
    def pretty_headers(self, obj: Message) -> str:
        return _pretty_json(obj.headers)

    # -- actions -----------------------------------------------------------

    def _selected_ids(self, request: HttpRequest, queryset: QuerySet) -> list[int] | None:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: broker.MAX_OPERATOR_MESSAGES + 1])
        if len(ids) > broker.MAX_OPERATOR_MESSAGES:
            self.message_user(
                request,
                f"More than {broker.MAX_OPERATOR_MESSAGES} messages selected; narrow the filters, "
                "or purge or redrive the whole queue from the queue list.",
                messages.ERROR,
            )
            return None
        return ids


    @admin.action(description="Requeue now (ready at once; dead-lettered ones go home)", permissions=["change"])
    def requeue_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return
        with transaction.atomic():
            n = broker.requeue(ids, by=_actor(request))
            _log(request, Message.objects.filter(pk__in=ids).defer("body", "headers"), "Requeued now through the admin.")
        skipped = len(ids) - n
        note = f" ({skipped} already ready, left alone)" if skipped else ""
        self.message_user(request, f"Requeued {n} message{'' if n == 1 else 's'}{note}.", messages.SUCCESS if n else messages.WARNING)

    @admin.action(description="Move to another queue…", permissions=["change"])
    def move_to_queue(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return None
        form = MoveForm(request.POST if _confirmed(request) else None)
        if not _confirmed(request) or not form.is_valid():
            return _confirm(
                self,
                request,
                queryset,
                action="move_to_queue",
                title=f"Move {len(ids)} message{'s' if len(ids) != 1 else ''}",
                summary="They become ready in the queue you pick (delayed ones keep their delay); "
                "a consumer holding one loses its lease. Delivery counts are kept.",
                items=[f"message {i}" for i in ids],
                button="Move",
                form=form,
            )
        target = form.cleaned_data["target"]
        with transaction.atomic():
            n = broker.move(ids, target, by=_actor(request))
            _log(request, Message.objects.filter(pk__in=ids).defer("body", "headers"), f"Moved to queue {target.name} through the admin.")
        self.message_user(request, f"Moved {n} message{'' if n == 1 else 's'} to {target.name}.", messages.SUCCESS if n else messages.WARNING)
        return None

    @admin.action(description="Dead-letter…", permissions=["change"])
    def dead_letter(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return None
        form = DeadLetterForm(request.POST if _confirmed(request) else None)
        if not _confirmed(request) or not form.is_valid():
            return _confirm(
                self,
                request,
                queryset,
                action="dead_letter",
                title=f"Dead-letter {len(ids)} message{'s' if len(ids) != 1 else ''}",
                summary="Each goes to its queue's dead-letter queue, or becomes dead in place when the queue "
                "has none; a consumer holding one loses its lease. Already dead messages are left alone.",
                items=[f"message {i}" for i in ids],
                button="Dead-letter",
                form=form,
                danger=True,
            )
        reason = form.cleaned_data["reason"] or f"dead-lettered by {_actor(request)} in the admin"
        with transaction.atomic():
            n = broker.dead_letter_now(ids, reason, by=_actor(request))
            _log(request, Message.objects.filter(pk__in=ids).defer("body", "headers"), f"Dead-lettered through the admin: {reason}")
        self.message_user(request, f"Dead-lettered {n} message{'' if n == 1 else 's'}.", messages.SUCCESS if n else messages.WARNING)
        return None

    @admin.action(description="Delete…", permissions=["change"])
    def delete_messages(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return None
        if not _confirmed(request):
            return _confirm(
                self,
                request,
                queryset,
                action="delete_messages",
                title=f"Delete {len(ids)} message{'s' if len(ids) != 1 else ''}?",
                summary=f"This deletes {len(ids)} message{'s' if len(ids) != 1 else ''} for good; "
                "a consumer holding one will find its ack stale.",
                items=[f"message {i}" for i in ids],
                button="Yes, delete",
                danger=True,
            )
        with transaction.atomic():
            # Logged first: the rows are gone afterwards.
            self.log_deletions(request, Message.objects.filter(pk__in=ids).defer("body", "headers"))
            n = broker.delete_messages(ids, by=_actor(request))
        self.message_user(request, f"Deleted {n} message{'' if n == 1 else 's'}.", messages.SUCCESS if n else messages.WARNING)
        return None


def _pretty_json(text: str) -> str:
    """Indented JSON in a <pre>, escaped: bodies come from anyone with a
    produce token, so they are untrusted HTML."""
    try:
        shown = json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=False)
    except ValueError:
        shown = text
    return format_html('<pre class="mq-json">{}</pre>', shown)


# --------------------------------------------------------------------------- #
# Consumers
# --------------------------------------------------------------------------- #


class ConsumerChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        held = broker.consumer_in_flight([c.pk for c in self.result_list])
        for consumer in self.result_list:
            consumer.held = held.get(consumer.pk, 0)


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    list_display = ("name", "short_id", "status", "last_beat", "in_flight_held", "queue_names")
    list_filter = ("status",)
    search_fields = ("=id", "name")
    ordering = ("status", "name")
    actions = ("release_leases",)
    fields = ("name", "id", "status", "queue_names", "last_beat", "registered", "heartbeat_timeout", "meta", "held_messages")
    readonly_fields = fields

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ConsumerChangeList

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Consumer | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Consumer | None = None) -> bool:
        return False

    @admin.display(description="id")
    def short_id(self, obj: Consumer) -> str:
        return obj.pk[:8]

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def last_beat(self, obj: Consumer) -> str:
        return _when(obj.last_heartbeat)

    @admin.display(description="registered")
    def registered(self, obj: Consumer) -> str:
        return _when(obj.registered_at)

    @admin.display(description="in flight")
    def in_flight_held(self, obj: Consumer) -> int:
        return getattr(obj, "held", 0)

    @admin.display(description="queues")
    def queue_names(self, obj: Consumer) -> str:
        return ", ".join(obj.queues) or "—"

    @admin.display(description="holds")
    def held_messages(self, obj: Consumer) -> Any:
        held = list(
            Message.objects.in_flight()
            .filter(consumer_id=obj.pk)
            .select_related("queue")
            .only("id", "queue__name", "lease_expires_at", "delivery_count")
            .order_by("id")[: HELD_SHOWN + 1]
        )
        if not held:
            return "nothing"
        url = reverse("admin:queues_message_changelist")
        rows = format_html_join(
            "",
            '<li><a href="{}{}/change/">message {}</a> in {} · delivery {} · lease expires {}</li>',
            ((url, m.pk, m.pk, m.queue.name, m.delivery_count, _when(m.lease_expires_at)) for m in held[:HELD_SHOWN]),
        )
        more = format_html('<li>… and more (<a href="{}?state=in_flight&amp;q={}">all</a>)</li>', url, obj.pk) if len(held) > HELD_SHOWN else ""
        return format_html("<ul>{}{}</ul>", rows, more)

    @admin.action(description="Release leases (held messages become ready again)", permissions=["change"])
    def release_leases(self, request: HttpRequest, queryset: QuerySet) -> None:
        consumers = list(queryset)
        total = 0
        with transaction.atomic():
            for consumer in consumers:
                total += broker.release_consumer(consumer.pk, reason=f"leases released by {_actor(request)} in the admin")
            _log(request, consumers, "Leases released through the admin.")
        self.message_user(
            request,
            f"Released {total} lease{'' if total == 1 else 's'} held by {', '.join(c.name for c in consumers)}.",
            messages.SUCCESS,
        )


# --------------------------------------------------------------------------- #
# Tokens
# --------------------------------------------------------------------------- #


class TokenCreateForm(forms.ModelForm):
    scope_choices = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, label="Scopes", help_text="admin implies the others."
    )

    class Meta:
        model = Token
        fields = ("name", "queue_pattern")


@admin.register(Token)
class TokenAdmin(admin.ModelAdmin):
    list_display = ("name", "key_id", "scopes", "queue_pattern", "created_at", "last_used_at", "status")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "=key_id")
    actions = ("revoke",)
    readonly_fields = ("name", "key_id", "scopes", "queue_pattern", "created_at", "last_used_at", "revoked_at")

    def get_form(self, request: HttpRequest, obj: Token | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = TokenCreateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Token | None = None) -> Any:
        # The secret (hash, seal) is never shown, not even its hash.
        return ("name", "scope_choices", "queue_pattern") if obj is None else self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Token | None = None) -> Any:
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Token | None = None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Token | None = None) -> bool:
        return False  # revoke instead: the key id stays in logs and the audit trail

    @admin.display(description="status", ordering="revoked_at")
    def status(self, obj: Token) -> str:
        return "revoked" if obj.revoked_at else "active"

    def save_model(self, request: HttpRequest, obj: Token, form: forms.ModelForm, change: bool) -> None:
        token, raw = Token.issue(obj.name, form.cleaned_data["scope_choices"], obj.queue_pattern or "*")
        obj.pk, obj.key_id, obj.scopes, obj.created_at = token.pk, token.key_id, token.scopes, token.created_at
        obj.secret_hash = obj.secret_sealed = ""  # not kept on the object past this request
        request._mq_raw_token = raw  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: Token, post_url_continue: str | None = None) -> HttpResponse:
        # The full token is rendered into this one response, never stored in
        # a message cookie or the session: a reload does not show it again.
        context = {
            **self.admin_site.each_context(request),
            "title": f"Token {obj.name} created",
            "token": obj,
            "raw": request._mq_raw_token,  # type: ignore[attr-defined]
            "opts": self.model._meta,
        }
        response = TemplateResponse(request, "admin/queues/token/issued.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        from django.utils import timezone

        with transaction.atomic():
            tokens = list(queryset.select_for_update().filter(revoked_at__isnull=True))
            Token.objects.filter(pk__in=[t.pk for t in tokens]).update(revoked_at=timezone.now())
            _log(request, tokens, "Revoked through the admin.")
        for t in tokens:
            forget(t.key_id)
        names = ", ".join(t.name for t in tokens) or "nothing (already revoked)"
        self.message_user(request, f"Revoked {names}.", messages.SUCCESS if tokens else messages.WARNING)
