"""Consumer registration, heartbeats and graceful leave (contract: Consumers)."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from ninja import Router, Schema
from pydantic import Field, field_validator

from .. import broker
from ..models import Consumer, ConsumerDict, Scope
from .auth import require
from .errors import json_response
from .schemas import NO_NUL, ErrorOut, QueueName, Strict

router = Router()


class ConsumerIn(Strict):
    name: str = Field(..., min_length=1, max_length=200, pattern=NO_NUL)
    queues: list[QueueName] = Field(default_factory=list, max_length=100)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("meta")
    @classmethod
    def _no_nul(cls, value: dict[str, Any]) -> dict[str, Any]:
        # jsonb refuses \u0000 anywhere; say so instead of failing in the database.
        if "\\u0000" in orjson.dumps(value).decode():
            raise ValueError("must not contain NUL characters")
        if len(orjson.dumps(value)) > 16384:
            raise ValueError("must be at most 16 KiB of JSON")
        return value
    heartbeat_timeout: int | None = Field(None, ge=2, le=3600)


class RegisteredOut(Schema):
    id: str
    heartbeat_interval: float
    heartbeat_timeout: int


ERRORS: dict[int | str, Any] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 410: ErrorOut, 422: ErrorOut}


@router.post("/consumers", response={201: RegisteredOut, **ERRORS}, summary="Register a consumer")
def register(request: HttpRequest, payload: ConsumerIn) -> HttpResponse:
    for name in payload.queues:
        require(request, Scope.CONSUME, name)
    require(request, Scope.CONSUME)
    c = broker.register_consumer(payload.name, payload.queues, payload.meta, payload.heartbeat_timeout)
    return json_response(
        {"id": c.pk, "heartbeat_interval": broker.heartbeat_interval(c.heartbeat_timeout), "heartbeat_timeout": c.heartbeat_timeout},
        201,
    )


@router.post("/consumers/{consumer_id}/heartbeat", response={200: ConsumerDict, **ERRORS}, summary="Heartbeat")
def heartbeat(request: HttpRequest, consumer_id: str) -> HttpResponse:
    require(request, Scope.CONSUME)
    c = broker.heartbeat(consumer_id)
    return json_response(c.to_dict(broker.consumer_in_flight([c.pk]).get(c.pk, 0)))


@router.delete("/consumers/{consumer_id}", response={200: dict, **ERRORS}, summary="Leave: release leases now")
def leave(request: HttpRequest, consumer_id: str) -> HttpResponse:
    require(request, Scope.CONSUME)
    released = broker.leave(consumer_id)
    return json_response({"released": released})


@router.get("/consumers", response={200: dict[str, list[ConsumerDict]], **ERRORS}, summary="List consumers")
def list_consumers(request: HttpRequest, all: bool = False) -> HttpResponse:
    """Live consumers, and those that died or left less than
    MQ_CONSUMER_FORGET_SECONDS ago; ``?all=true``: every consumer still kept."""
    require(request, Scope.CONSUME)
    kept = Consumer.objects.all() if all else Consumer.objects.listed()
    consumers = list(kept.order_by("-last_heartbeat")[:1000])
    counts = broker.consumer_in_flight([c.pk for c in consumers])
    return json_response({"consumers": [c.to_dict(counts.get(c.pk, 0)) for c in consumers]})
