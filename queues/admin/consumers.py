"""Consumers: what each holds, and releasing its leases."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from .. import broker
from ..models import Consumer, Message
from .shared import actor, clipped, log_changes, when

# Messages listed on a consumer's page.
HELD_SHOWN = 50


class ConsumerChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        held = broker.consumer_in_flight([c.pk for c in self.result_list])
        for consumer in self.result_list:
            consumer.held = held.get(consumer.pk, 0)


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    list_display = ("consumer_name", "short_id", "status", "last_beat", "in_flight_held", "queue_names")
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

    @admin.display(description="name", ordering="name")
    def consumer_name(self, obj: Consumer) -> str:
        return clipped(obj.name, "mq-name")

    @admin.display(description="id")
    def short_id(self, obj: Consumer) -> str:
        return obj.pk[:8]

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def last_beat(self, obj: Consumer) -> str:
        return when(obj.last_heartbeat)

    @admin.display(description="registered")
    def registered(self, obj: Consumer) -> str:
        return when(obj.registered_at)

    @admin.display(description="in flight")
    def in_flight_held(self, obj: Consumer) -> int:
        return getattr(obj, "held", 0)

    @admin.display(description="queues")
    def queue_names(self, obj: Consumer) -> str:
        return clipped(", ".join(obj.queues), "mq-name") if obj.queues else "—"

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
            ((url, m.pk, m.pk, m.queue.name, m.delivery_count, when(m.lease_expires_at)) for m in held[:HELD_SHOWN]),
        )
        more = format_html('<li>… and more (<a href="{}?state=in_flight&amp;q={}">all</a>)</li>', url, obj.pk) if len(held) > HELD_SHOWN else ""
        return format_html("<ul>{}{}</ul>", rows, more)

    @admin.action(description="Release leases (held messages become ready again)", permissions=["change"])
    def release_leases(self, request: HttpRequest, queryset: QuerySet) -> None:
        consumers = list(queryset)
        total = 0
        with transaction.atomic():
            for consumer in consumers:
                total += broker.release_consumer(consumer.pk, reason=f"leases released by {actor(request)} in the admin")
            log_changes(request, consumers, "Leases released through the admin.")
        self.message_user(
            request,
            f"Released {total} lease{'' if total == 1 else 's'} held by {', '.join(c.name for c in consumers)}.",
            messages.SUCCESS,
        )
