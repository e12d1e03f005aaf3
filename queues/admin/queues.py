"""The queue list and page: live counts, the configuration form, and the
pause, resume, purge and redrive actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from .. import broker
from ..exceptions import InvalidValue
from ..models import Message, Queue, QueueCounts
from .shared import actor, clipped, confirm_page, confirmed, span


def _counts(queue: Queue) -> QueueCounts:
    return getattr(queue, "counts", None) or QueueCounts()


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
            try:
                broker.check_dead_letter_chain(name, dlq.name)
            except InvalidValue as e:
                self.add_error("dead_letter_queue", e.message)
        return data


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin):
    form = QueueForm
    list_display = (
        "queue_name",
        "status",
        "ready",
        "delayed",
        "in_flight",
        "dead",
        "oldest_ready",
        "dead_letter",
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
            queue = (broker.pause if form.cleaned_data["paused"] else broker.resume)(queue, by=actor(request))
        obj.pk = queue.pk
        obj.created_at, obj.updated_at = queue.created_at, queue.updated_at

    # -- columns -----------------------------------------------------------

    @admin.display(description="name", ordering="name")
    def queue_name(self, obj: Queue) -> str:
        return clipped(obj.name, "mq-name")

    @admin.display(description="dead-letter queue", ordering="dead_letter_queue__name")
    def dead_letter(self, obj: Queue) -> str:
        return clipped(obj.dead_letter_queue.name, "mq-name") if obj.dead_letter_queue is not None else "—"

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
        return "—" if age is None else span(age)

    @admin.display(description="live counts")
    def live_counts(self, obj: Queue) -> str:
        if obj.pk is None:
            return "—"
        c = broker.queue_counts([obj.pk]).get(obj.pk, QueueCounts())
        age = "—" if c.oldest_ready_age is None else span(c.oldest_ready_age)
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
        if not confirmed(request):
            counts = touched(queues)
            total = sum(counts.values())
            return confirm_page(
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
                result = run(queue, actor(request))
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
        # An indexed count per queue of what broker.redrive would move.
        return {q.pk: Message.objects.redrivable(q).count() for q in queues}

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
