"""API tokens: issued here with the secret shown once, listed, revoked."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from ..api.auth import forget
from ..models import Scope, Token
from .shared import clipped, log_changes


class TokenCreateForm(forms.ModelForm):
    scope_choices = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, label="Scopes", help_text="admin implies the others."
    )

    class Meta:
        model = Token
        fields = ("name", "queue_pattern")


@admin.register(Token)
class TokenAdmin(admin.ModelAdmin):
    list_display = ("token_name", "key_id", "scope_list", "queues", "created_at", "last_used_at", "status")
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

    @admin.display(description="name", ordering="name")
    def token_name(self, obj: Token) -> str:
        return clipped(obj.name, "mq-name")

    @admin.display(description="scopes", ordering="scopes")
    def scope_list(self, obj: Token) -> str:
        return ", ".join(obj.scopes.split(","))  # wraps between scopes

    @admin.display(description="queue pattern", ordering="queue_pattern")
    def queues(self, obj: Token) -> str:
        return clipped(obj.queue_pattern, "mq-name")

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
        with transaction.atomic():
            tokens = [t for t in queryset.filter(revoked_at__isnull=True) if t.revoke()]
            log_changes(request, tokens, "Revoked through the admin.")
        for t in tokens:
            forget(t.key_id)
        names = ", ".join(t.name for t in tokens) or "nothing (already revoked)"
        self.message_user(request, f"Revoked {names}.", messages.SUCCESS if tokens else messages.WARNING)
