"""The message list and page, and the actions an operator takes on chosen
messages: requeue, move, dead-letter, delete.

Messages are never edited or saved through a form: a form save would write a
whole row a receiver may be changing at the same moment. The list never
counts the whole table (at most ``COUNT_LIMIT`` rows), never loads bodies,
and offers only filters the indexes serve.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Substr
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from .. import broker
from ..models import Message, MessageQuerySet, Queue
from ..states import MessageState as S
from .shared import actor, clipped, confirm_page, confirmed, log_changes, span, when

# Rows the message list counts at most: beyond this it says "more than".
COUNT_LIMIT = 10_000
# The list shows this much of each body, and its tooltip at most
# BODY_TITLE_CHARS: the list reads no more of a body than that.
BODY_PREVIEW_CHARS = 80
BODY_TITLE_CHARS = 1000


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


class QueueFilter(admin.RelatedFieldListFilter):
    template = "admin/queues/name_filter.html"  # long names cut, full in a tooltip


class DeadOfFilter(admin.SimpleListFilter):
    """Dead messages of a queue as the API counts them: dead in it, or
    dead-lettered out of it into its dead-letter queue."""

    title = "dead messages of"
    parameter_name = "dead_of"
    template = "admin/queues/name_filter.html"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Queue.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value() or ""
        if not value.isdigit():
            return queryset
        # The list's queryset comes from Message.objects: a MessageQuerySet.
        return cast(MessageQuerySet, queryset).dead_of(int(value))


# The orderings of the list that are plain id order (the default, and a
# click on the id column).
ID_ORDERS = {"id", "-id", "pk", "-pk"}


# The list's parameters that leave its rows as they are (order, page).
PLAIN_PARAMS = {"o", "p", "e", "_changelist_filters"}


class MessageChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        # Bodies can be 256 KiB each: the list reads only their beginning
        # (one character more than the tooltip shows, to know it goes on).
        rows = super().get_queryset(request, exclude_parameters).defer("body", "headers")
        if request.GET.get("state__exact") == S.IN_FLIGHT and set(rows.query.order_by) <= ID_ORDERS:
            rows = cast(MessageQuerySet, rows).in_id_order(newest=self.newest(rows), few=True)
        return rows.annotate(body_head=Substr("body", 1, BODY_TITLE_CHARS + 1))

    @staticmethod
    def newest(rows: QuerySet) -> bool:
        return all(str(key).startswith("-") for key in rows.query.order_by)

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # A queue's ready messages, by id: the page's ids come from the
        # claim's index (``ready_ids``). mq_msg_state leaves ready rows out,
        # and a walk of the queue's ids to them reads every message in
        # flight or delayed on the way. Counting and acting on all of them
        # still go through the filtered rows.
        queue = request.GET.get("queue__id__exact", "")
        filters = set(request.GET) - PLAIN_PARAMS
        if not (
            request.GET.get("state__exact") == S.READY
            and queue.isdigit()
            and filters == {"state__exact", "queue__id__exact"}
            and set(self.queryset.query.order_by) <= ID_ORDERS
        ):
            return
        newest, start = self.newest(self.queryset), (self.page_num - 1) * self.list_per_page
        ids = broker.ready_ids(int(queue), newest=newest, limit=start + self.list_per_page)[start:]
        self.result_list = cast(MessageQuerySet, self.queryset.filter(id__in=ids)).in_id_order(newest=newest, few=True)


class MoveForm(forms.Form):
    target = forms.ModelChoiceField(queryset=Queue.objects.order_by("name"), label="Move to queue")


class DeadLetterForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False, label="Reason (kept as the last error)")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "queue_name",
        # What went wrong next to what was sent: both stay in view when the
        # list is wider than the window (the columns after them scroll).
        "body_preview",
        "error",
        "state",
        "priority",
        "group",
        "deliveries",
        "age",
        "held_by",
    )
    list_select_related = ("queue", "origin_queue")
    list_filter = (("queue", QueueFilter), "state", PriorityFilter, GroupFilter, AgeFilter, DeadOfFilter)
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
        name = f"{obj.queue.name} (from {obj.origin_queue.name})" if obj.origin_queue is not None else obj.queue.name
        return clipped(name, "mq-name")

    @admin.display(description="body")
    def body_preview(self, obj: Message) -> str:
        head: str = getattr(obj, "body_head", "")  # see MessageChangeList
        flat = " ".join(head.split())
        more = len(flat) > BODY_PREVIEW_CHARS or len(head) > BODY_TITLE_CHARS
        return clipped(head, "mq-body", shown=flat[:BODY_PREVIEW_CHARS] + ("…" if more else ""), title_max=BODY_TITLE_CHARS)

    @admin.display(description="actions")
    def act_on_it(self, obj: Message) -> Any:
        url = reverse("admin:queues_message_changelist")
        return format_html(
            '<a href="{}?q={}">Open it in the message list</a> to requeue, move, dead-letter or delete it.', url, obj.pk
        )

    @admin.display(description="group", ordering="group_key")
    def group(self, obj: Message) -> str:
        return clipped(obj.group_key, "mq-name") if obj.group_key else "—"

    @admin.display(description="deliveries", ordering="delivery_count")
    def deliveries(self, obj: Message) -> int:
        return obj.delivery_count  # a shorter header than the field's: the list is wide

    # Ordered by id: ids are handed out in enqueue order, and the enqueue
    # time has no index (every send and claim would write one).
    @admin.display(description="age", ordering="id")
    def age(self, obj: Message) -> str:
        return span(max(0.0, time.time() - obj.enqueued_at))

    @admin.display(description="consumer")
    def held_by(self, obj: Message) -> Any:
        if not obj.consumer_id:
            return "—"
        url = reverse("admin:queues_consumer_change", args=[obj.consumer_id])
        return format_html('<a href="{}">{}</a>', url, obj.consumer_id[:8])

    @admin.display(description="last error")
    def error(self, obj: Message) -> str:
        text = obj.last_error or ""
        return clipped(text, "mq-error", shown=text if len(text) <= 160 else text[:159] + "…") if text else ""

    @admin.display(description="enqueued")
    def enqueued(self, obj: Message) -> str:
        return when(obj.enqueued_at)

    @admin.display(description="visible at")
    def visible(self, obj: Message) -> str:
        return when(obj.visible_at) if obj.state == S.DELAYED else "—"

    @admin.display(description="lease expires")
    def lease_expires(self, obj: Message) -> str:
        return when(obj.lease_expires_at) if obj.state == S.IN_FLIGHT else "—"

    @admin.display(description="dead since")
    def dead_at_time(self, obj: Message) -> str:
        return when(obj.dead_at)

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
            n = broker.requeue(ids, by=actor(request))
            log_changes(request, Message.objects.filter(pk__in=ids).defer("body", "headers"), "Requeued now through the admin.")
        skipped = len(ids) - n
        note = f" ({skipped} already ready, left alone)" if skipped else ""
        self.message_user(request, f"Requeued {n} message{'' if n == 1 else 's'}{note}.", messages.SUCCESS if n else messages.WARNING)

    @admin.action(description="Move to another queue…", permissions=["change"])
    def move_to_queue(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return None
        form = MoveForm(request.POST if confirmed(request) else None)
        if not confirmed(request) or not form.is_valid():
            return confirm_page(
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
            n = broker.move(ids, target, by=actor(request))
            log_changes(request, Message.objects.filter(pk__in=ids).defer("body", "headers"), f"Moved to queue {target.name} through the admin.")
        self.message_user(request, f"Moved {n} message{'' if n == 1 else 's'} to {target.name}.", messages.SUCCESS if n else messages.WARNING)
        return None

    @admin.action(description="Dead-letter…", permissions=["change"])
    def dead_letter(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return None
        form = DeadLetterForm(request.POST if confirmed(request) else None)
        if not confirmed(request) or not form.is_valid():
            return confirm_page(
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
        reason = form.cleaned_data["reason"] or f"dead-lettered by {actor(request)} in the admin"
        with transaction.atomic():
            n = broker.dead_letter_now(ids, reason, by=actor(request))
            log_changes(request, Message.objects.filter(pk__in=ids).defer("body", "headers"), f"Dead-lettered through the admin: {reason}")
        self.message_user(request, f"Dead-lettered {n} message{'' if n == 1 else 's'}.", messages.SUCCESS if n else messages.WARNING)
        return None

    @admin.action(description="Delete…", permissions=["change"])
    def delete_messages(self, request: HttpRequest, queryset: QuerySet) -> TemplateResponse | None:
        ids = self._selected_ids(request, queryset)
        if ids is None:
            return None
        if not confirmed(request):
            return confirm_page(
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
            n = broker.delete_messages(ids, by=actor(request))
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
