"""The JSON API (``/api/v1/``): thin views that authenticate, call the broker
and shape its results. Errors become the contract's JSON in ``errors.py``."""

from __future__ import annotations

import time
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from ninja import Body, Query, Router

from mqadmin.handlers import NOW_SUFFIX, SERVED_NOW

from .. import broker, notify
from ..exceptions import InvalidValue, NotFound
from ..models import Consumer, Queue, Scope, epoch_to_iso
from . import schemas as s
from .auth import BearerAuth, require

router = Router()

# A waiting receive re-checks the queue at least this often even without a
# wake-up: covers delays coming due, lease expiries, a lost NOTIFY.
POLL_RECHECK_SECONDS = 1.0


def json_response(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


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
    from ..models import QUEUE_NAME_RULE, is_queue_name

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


@router.post(
    "/queues/{name}/receive",
    auth=BearerAuth(on_loop=True),
    response={200: s.ReceiveOut, **ERRORS},
    summary="Lease messages (long poll with wait)",
)
async def receive(request: HttpRequest, name: str, payload: s.ReceiveIn | None = None) -> HttpResponse:
    p = payload or s.ReceiveIn.model_validate({})
    require(request, Scope.CONSUME, name)
    queue = await broker.aget_queue(name)
    deadline = time.monotonic() + p.wait
    options = _options(p)
    # The consumer's check and the acks go in the same thread hand-off as
    # the first look.
    first = p.consumer is not None or p.ack is not None
    acked = None
    # While it waits, a send in this process may lease it messages directly.
    offer = notify.Offer(p.max, p.visibility_timeout, p.consumer)
    while True:
        # Register before looking, so a send between the look and the wait
        # still wakes us.
        with notify.waiter(queue.id, offer) as waiter:
            # Should the client hang up while a look runs, what it leased
            # is ready again at once (``unlost``).
            if first:
                deliveries, acked = await broker.unlost(queue.id, _afirst_look(queue, p.ack, **options), _leased)
                first = False
            else:
                deliveries = await broker.unlost(queue.id, broker.areceive(queue, **options), list)
            remaining = deadline - time.monotonic()
            if not deliveries and remaining > 0:
                handed = await waiter.wait(min(remaining, POLL_RECHECK_SECONDS))
                if isinstance(handed, list):
                    deliveries = handed
            if deliveries or remaining <= 0:
                return _received(deliveries, acked)
        # Pick up pause/resume and config changes made while we waited.
        queue = await broker.aget_queue(name)


# ``mq serve``'s handler (mqadmin.handlers) serves a receive that does not
# wait here: the same call, answered on the one-hand-off path of sync views.
# Not part of the API: it answers 404 to anyone else.
@router.post(f"/queues/{{name}}/receive{NOW_SUFFIX}", response={200: s.ReceiveOut, **ERRORS}, include_in_schema=False)
def receive_now(request: HttpRequest, name: str, payload: s.ReceiveIn | None = None) -> HttpResponse:
    """``receive`` for a call with no ``wait``: its first look is all it does,
    so it runs as a sync view, in one hand-off to the request's thread
    instead of two: a quarter less server CPU for an empty receive, a sixth
    for a one-message round trip. The handler chose it by
    the body and watches the client meanwhile: should the client hang up,
    what the look leased (``response.leased``) is released at once, as
    ``receive`` does through ``broker.unlost``."""
    if not getattr(request, "scope", {}).get(SERVED_NOW):
        raise NotFound(f"No endpoint at {request.path}.")
    p = payload or s.ReceiveIn.model_validate({})
    require(request, Scope.CONSUME, name)
    queue = broker.get_queue(name)
    deliveries, acked = _first_look(queue, p.ack, **_options(p))
    response = _received(deliveries, acked)
    response.leased = (queue.id, deliveries)  # type: ignore[attr-defined]
    return response


def _options(p: s.ReceiveIn) -> dict[str, Any]:
    return {"max_messages": p.max, "visibility_timeout": p.visibility_timeout, "consumer_id": p.consumer}


def _received(deliveries: list[broker.Delivery], acked: broker.ReceiptResult | None) -> HttpResponse:
    out: dict[str, Any] = {"messages": [d.to_dict() for d in deliveries]}
    if acked is not None:
        out |= {"acked": acked.done, "stale": acked.stale}
    return json_response(out)


def _check_consumer(consumer_id: str) -> None:
    from ..exceptions import ConsumerDead, ConsumerNotFound
    from ..models import ConsumerStatus

    status = Consumer.objects.filter(pk=consumer_id).values_list("status", flat=True).first()
    if status is None:
        raise ConsumerNotFound(f"No consumer with id {consumer_id!r}; register first.")
    if status == ConsumerStatus.DEAD:
        raise ConsumerDead()


def _leased(look: tuple[list[broker.Delivery], Any]) -> list[broker.Delivery]:
    return look[0]


def _first_look(
    queue: Queue, receipts: list[str] | None, **options: Any
) -> tuple[list[broker.Delivery], broker.ReceiptResult | None]:
    """A receive's first look with what rides on it: the consumer's check
    (nothing is acked for a consumer that is unknown or dead), then the acks
    (before the claim, so a long poll holds no finished message; on
    PostgreSQL in the claim's own statement), then the claim."""
    if options["consumer_id"] is not None:
        _check_consumer(options["consumer_id"])
    if receipts is None:
        return broker.receive_before_wait(queue, **options), None
    return broker.ack_and_receive_before_wait(queue, receipts, **options)


_afirst_look = sync_to_async(_first_look)


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
