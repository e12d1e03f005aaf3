"""A client that hangs up while its receive claims never keeps a lease: what
the claim leased is ready again at once, as if never delivered, whichever
entry point the receive came through (the one wait loop, broker.waiting).
The JSON API's receive and the consume stream are checked beside their own
tests (test_api_messages, test_stream); this is the SQS ReceiveMessage."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from queues import broker
from queues.models import Message, Token

from .workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def signed_sqs_headers(raw_token: str, action: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """Headers of an SQS JSON request signed with SigV4, as boto3 signs them."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    key_id, _, secret = raw_token.partition(".")
    request = AWSRequest(
        method="POST",
        url="http://testserver/sqs/",
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}", "Host": "testserver"},
    )
    SigV4Auth(Credentials(key_id, secret), "sqs", "us-east-1").add_auth(request)
    return [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]


def test_what_an_sqs_receive_leased_is_ready_again_at_once_when_its_client_hangs_up_during_the_claim(monkeypatch: Any) -> None:
    from django.core.asgi import get_asgi_application

    from queues.broker import claim as claiming

    application = get_asgi_application()
    _token, raw = Token.issue("sqs-hang-up", ["consume", "produce"], "*")
    queue, _ = broker.put_queue("jobs", {"visibility_timeout": 3600})
    sent = broker.publish(queue, [broker.NewMessage(body=b'"a"'), broker.NewMessage(body=b'"b"')])
    claimed = threading.Event()
    hung_up = threading.Event()
    claim = claiming._claim

    def slow_claim(*args: Any, **kw: Any) -> Any:
        hung_up.wait(5)  # the client is gone before the claim runs
        got = claim(*args, **kw)
        claimed.set()
        return got

    monkeypatch.setattr(claiming, "_claim", slow_claim)
    body = json.dumps({"QueueUrl": "http://testserver/sqs/jobs", "MaxNumberOfMessages": 10, "WaitTimeSeconds": 5}).encode()
    answered: list[dict[str, Any]] = []

    async def client() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.2)
            hung_up.set()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            answered.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/sqs/", "raw_path": b"/sqs/", "query_string": b"",
            "headers": signed_sqs_headers(raw, "ReceiveMessage", body),
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        }
        await application(scope, receive, send)

    asyncio.run(client())
    assert answered == []  # never answered
    assert claimed.wait(5)
    wait_for(lambda: broker.queue_counts()[queue.id].ready == 2, timeout=5, interval=0.02)
    left = Message.objects.filter(pk__in=[int(p.id) for p in sent]).order_by("id")
    assert [(m.state, m.delivery_count, m.lease_token) for m in left] == [("ready", 0, None)] * 2
    assert [d.body for d in broker.receive(queue, max_messages=10)] == ['"a"', '"b"']
