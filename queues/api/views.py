"""The JSON API (``/api/v1/``): thin views that authenticate, call the broker
and shape its results. Errors become the contract's JSON in ``errors.py``."""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from ninja import Body, Query, Router

from .. import broker, notify
from ..exceptions import InvalidValue, NotFound
from ..models import QUEUE_NAME_RULE, Scope, epoch_to_iso, is_queue_name
from ..speedups import SyncTwin, is_twin_request
from . import schemas as s
from .auth import BearerAuth, require
from .errors import json_response

router = Router()

ERRORS: dict[int | str, Any] = {
    400: s.ErrorOut,
    401: s.ErrorOut,
    403: s.ErrorOut,
    404: s.ErrorOut,
    409: s.ErrorOut,
    413: s.ErrorOut,
    422: s.ErrorOut,
}


# ------------------------------------------------------------------ queues --


@router.get("/queues", response={200: s.QueueListOut, **ERRORS}, summary="List queues with live counts")
def list_queues(request: HttpRequest) -> HttpResponse:
    token = request.auth  # type: ignore[attr-defined]
    rows = broker.list_queues()
    return json_response({"queues": [q.to_dict(c) for q, c in rows if token.sees(q.name)]})


@router.get("/queues/{name}", response={200: s.QueueOut, **ERRORS}, summary="One queue with live counts")
def get_queue(request: HttpRequest, name: str) -> HttpResponse:
    token = request.auth  # type: ignore[attr-defined]
    if not token.sees(name):
        require(request, Scope.ADMIN, name)
    queue = broker.get_queue(name)
    return json_response(queue.to_dict(broker.queue_counts([queue.id])[queue.id]))


@router.put("/queues/{name}", response={200: s.QueueOut, 201: s.QueueOut, **ERRORS}, summary="Create or update a queue")
def put_queue(request: HttpRequest, name: str, payload: s.QueueIn | None = None) -> HttpResponse:
    require(request, Scope.ADMIN, name)
    _check_name(name)
    config = payload.model_dump(exclude_unset=True) if payload else {}
    queue, created = broker.put_queue(name, config)
    queue = broker.get_queue(name)
    return json_response(queue.to_dict(broker.queue_counts([queue.id])[queue.id]), 201 if created else 200)


@router.delete("/queues/{name}", response={204: None, **ERRORS}, summary="Delete a queue and its messages")
def delete_queue(request: HttpRequest, name: str) -> HttpResponse:
    require(request, Scope.ADMIN, name)
    broker.delete_queue(broker.get_queue(name))
    return HttpResponse(status=204)


@router.post("/queues/{name}/purge", response={200: s.PurgedOut, **ERRORS}, summary="Delete every message")
def purge(request: HttpRequest, name: str) -> HttpResponse:
    require(request, Scope.ADMIN, name)
    return json_response({"purged": broker.purge(broker.get_queue(name))})


@router.post("/queues/{name}/redrive", response={200: s.CountOut, **ERRORS}, summary="Move dead messages back")
def redrive(request: HttpRequest, name: str, payload: s.RedriveIn | None = None) -> HttpResponse:
    require(request, Scope.ADMIN, name)
    moved = broker.redrive(broker.get_queue(name), max_messages=payload.max if payload else None)
    return json_response({"moved": moved})


def _check_name(name: str) -> None:
    if not is_queue_name(name):
        raise InvalidValue(f"Queue names are {QUEUE_NAME_RULE}.")


# ---------------------------------------------------------------- messages --


@router.post("/queues/{name}/messages", response={201: s.SendOut, **ERRORS, 429: s.ErrorOut}, summary="Send messages")
def send(request: HttpRequest, name: str, payload: Body[s.SendIn]) -> HttpResponse:
    require(request, Scope.PRODUCE, name)
    queue = broker.get_queue(name)
    items = payload.messages if isinstance(payload, s.BatchIn) else [payload]
    results = broker.publish(queue, new_messages(items))
    return json_response({"messages": [r.to_dict() for r in results]}, 201)


def new_messages(items: list[s.MessageIn]) -> list[broker.NewMessage]:
    """A send's messages, validated (``s.Plain``: the client's JSON objects) as the broker takes them."""
    if isinstance(items, s.Plain):
        return [_from_plain(m) for m in items]
    return [
        broker.NewMessage(
            body=orjson.dumps(m.body),
            priority=m.priority,
            delay=m.delay,
            group=m.group,
            dedup_id=m.dedup_id,
            headers=m.headers,
        )
        for m in items
    ]


def _from_plain(m: dict[str, Any]) -> broker.NewMessage:
    body = orjson.dumps(m["body"])
    if len(m) == 1:
        return broker.NewMessage(body)
    return broker.NewMessage(body, m.get("priority", 0), m.get("delay"), m.get("group"), m.get("dedup_id"), m.get("headers") or {})


@router.post(
    "/queues/{name}/receive",
    auth=BearerAuth(on_loop=True),
    response={200: s.ReceiveOut, **ERRORS},
    summary="Lease messages (long poll with wait)",
    url_name="receive",
)
async def receive(request: HttpRequest, name: str, payload: s.ReceiveIn | None = None) -> HttpResponse:
    p = payload or s.ReceiveIn.model_validate({})
    require(request, Scope.CONSUME, name)
    queue = await broker.aget_queue(name)
    # While it waits, a send in this process may lease it messages directly.
    offer = notify.Offer(p.max, p.visibility_timeout, p.consumer)
    looks = broker.thread_looks(p.ack, max_messages=p.max, visibility_timeout=p.visibility_timeout, consumer_id=p.consumer)
    return _received(await broker.long_poll(queue, looks, offer=offer, wait=p.wait))


@router.post(
    "/queues/{name}/receive-now",
    response={200: s.ReceiveOut, **ERRORS},
    include_in_schema=False,
    url_name="receive_now",
)
def receive_now(request: HttpRequest, name: str, payload: s.ReceiveIn | None = None) -> HttpResponse:
    """``receive``'s sync twin, for a call that does not wait: its first look
    is all it does, so ``mq serve``'s handler runs it as a sync view, in one
    hand-off to the request's thread instead of two. Not part of the API:
    it answers 404 to a request the handler did not route here."""
    if not is_twin_request(request):
        raise NotFound(f"No endpoint at {request.path}.")
    p = payload or s.ReceiveIn.model_validate({})
    require(request, Scope.CONSUME, name)
    queue = broker.get_queue(name)
    options = {"max_messages": p.max, "visibility_timeout": p.visibility_timeout, "consumer_id": p.consumer}
    received = broker.first_look(queue, p.ack, options)
    response = _received(received)
    response.leased = (queue.id, received.deliveries)  # type: ignore[attr-defined]
    return response


def _release_unanswered(response: HttpResponseBase) -> None:
    """The client hung up while ``receive_now`` ran: what it leased is ready
    again at once, as ``broker.unlost`` does for the async view."""
    leased: tuple[int, list[broker.Delivery]] | None = getattr(response, "leased", None)
    if leased and leased[1]:
        broker.release_unanswered_now(*leased)


def may_wait(body: bytes) -> bool:
    """Whether a receive's body may ask it to wait: anything but a JSON
    object whose ``wait`` is absent or zero. A body the API would refuse
    goes the async view's way, which answers it."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return True
    if not isinstance(data, dict):
        return True
    wait = data.get("wait", 0)
    return type(wait) not in (int, float) or wait != 0


# Views (by URL name) that a sync twin may serve under `mq serve` (queues.speedups).
SYNC_TWINS = {"receive": SyncTwin("receive_now", when=lambda body: not may_wait(body), on_hang_up=_release_unanswered)}


def _received(received: broker.Received) -> HttpResponse:
    out: dict[str, Any] = {"messages": [d.to_dict() for d in received.deliveries]}
    if received.acked is not None:
        out |= {"acked": received.acked.done, "stale": received.acked.stale}
    return json_response(out)


@router.post("/queues/{name}/ack", response={200: s.AckOut, **ERRORS}, summary="Acknowledge (delete) messages")
def ack(request: HttpRequest, name: str, payload: s.AckIn) -> HttpResponse:
    require(request, Scope.CONSUME, name)
    result = broker.ack(broker.get_queue(name), payload.receipts)
    return json_response({"acked": result.done, "stale": result.stale})


@router.post("/queues/{name}/nack", response={200: s.NackOut, **ERRORS}, summary="Give messages back as failed")
def nack(request: HttpRequest, name: str, payload: s.NackIn) -> HttpResponse:
    require(request, Scope.CONSUME, name)
    result = broker.nack(broker.get_queue(name), payload.receipts, delay=payload.delay, reason=payload.reason)
    return json_response({"nacked": result.done, "stale": result.stale})


@router.post("/queues/{name}/extend", response={200: s.ExtendOut, **ERRORS}, summary="Extend leases")
def extend(request: HttpRequest, name: str, payload: s.ExtendIn) -> HttpResponse:
    require(request, Scope.CONSUME, name)
    result, expires = broker.extend(broker.get_queue(name), payload.receipts, payload.visibility_timeout)
    return json_response(
        {"extended": result.done, "stale": result.stale, "lease_expires_at": epoch_to_iso(expires)}
    )


class BrowseQuery(s.Schema):
    state: s.BrowseState = "ready"
    limit: int = s.Field(50, ge=1, le=500)
    after: int | None = s.Field(None, ge=0, le=2**63 - 1)


@router.get("/queues/{name}/messages", response={200: s.BrowseOut, **ERRORS}, summary="Browse without leasing")
def browse(request: HttpRequest, name: str, q: Query[BrowseQuery]) -> HttpResponse:
    require(request, Scope.ADMIN, name)
    messages = broker.browse(broker.get_queue(name), state=q.state, limit=q.limit, after=q.after)
    nxt = str(messages[-1].pk) if len(messages) == q.limit else None
    return json_response({"messages": [m.to_dict() for m in messages], "next": nxt})
