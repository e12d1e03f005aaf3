"""The JSON API: one NinjaAPI, mounted at /api/v1/."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from ninja import NinjaAPI
from ninja.errors import ValidationError, ValidationErrorContext
from ninja.openapi.schema import OpenAPISchema
from ninja.parser import Parser
from ninja.renderers import BaseRenderer

from . import errors
from .auth import BearerAuth


class ORJSONParser(Parser):
    def parse_body(self, request: HttpRequest) -> Any:
        return orjson.loads(request.body)


class ORJSONRenderer(BaseRenderer):
    media_type = "application/json"

    def render(self, request: HttpRequest, data: Any, *, response_status: int) -> bytes:
        return errors.json_bytes(data)


class API(NinjaAPI):
    def validation_error_from_error_contexts(self, error_contexts: list[ValidationErrorContext]) -> ValidationError:
        exc = super().validation_error_from_error_contexts(error_contexts)
        # ninja drops each error's input; errors.invalid needs a float's to
        # answer a number where an integer belongs as a value (422), not a
        # type (400). Only floats are put back: nothing long is echoed.
        inputs = [e.get("input") for c in error_contexts for e in c.pydantic_validation_error.errors(include_url=False)]
        for error, value in zip(exc.errors, inputs, strict=True):
            if isinstance(value, float):
                error["input"] = value
        return exc

    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None) -> OpenAPISchema:
        """Ninja's document, and what ninja does not serve: the websocket
        streams, /healthz and /metrics (``openapi.extra_paths``)."""
        from .openapi import extra_paths

        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        bearer: list[dict[str, list[str]]] = [{name: []} for name in schema.get("components", {}).get("securitySchemes", {})]
        schema["paths"].update(extra_paths(bearer))
        return schema


def docs_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Ninja's docs page and openapi.json, as the rest of the API answers:
    GET (or HEAD) only, another method is a 405; and the document ends with
    a newline like every JSON answer (``errors.json_bytes``). Ninja renders
    it with Django's encoder: the schema has integer keys (status codes)
    that orjson would refuse."""

    @require_safe
    @wraps(view)
    def docs(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        response = view(request, **kwargs)
        if response.get("Content-Type", "").startswith("application/json") and not response.content.endswith(b"\n"):
            response.content += b"\n"
        return response

    return docs


def build_api() -> NinjaAPI:
    from .consumers import router as consumers_router
    from .views import router as queues_router

    api = API(
        title="mqadmin",
        version="1",
        description=(
            "A message queue inside Django. Authenticate with `Authorization: Bearer <key id>.<secret>` "
            "(create one with `python manage.py mq token create NAME --scope produce,consume,admin`). "
            'Every error is `{"error": {"code": ..., "message": ...}}`.'
        ),
        auth=BearerAuth(),
        parser=ORJSONParser(),
        renderer=ORJSONRenderer(),
        urls_namespace="api",
        docs_url="/docs",
        openapi_url="/openapi.json",
        docs_decorator=docs_view,
    )
    errors.install(api)
    api.add_router("/", queues_router, tags=["queues"])
    api.add_router("/", consumers_router, tags=["consumers"])
    return api


api = build_api()


def urls() -> tuple[list[Any], str, str]:
    """The API's URL patterns (for ``include``), with their sync twins set on
    the views they may serve for (``queues.speedups.SyncTwin``)."""
    from django.urls import URLPattern

    from .views import SYNC_TWINS

    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        if isinstance(pattern, URLPattern) and pattern.name in SYNC_TWINS:
            pattern.callback.sync_twin = SYNC_TWINS[pattern.name]  # type: ignore[attr-defined]
    return patterns, app_name, namespace
