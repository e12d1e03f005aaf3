"""The SQS-compatible endpoint, driven by boto3 itself over real HTTP against
a live ``mq serve`` pointed at the test database."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from .live import live_server


@pytest.fixture(scope="module")
def sqs_server(django_db_setup: None) -> Iterator[str]:
    """One live ``mq serve`` per module, on the test database (no monitor:
    the tests give messages back explicitly); yields its base URL."""
    from django.conf import settings

    # Tokens' secrets are sealed with SECRET_KEY: the server must share it.
    with live_server(monitor=False, SECRET_KEY=settings.SECRET_KEY) as url:
        yield url


def _client(base: str, raw_token: str) -> Any:
    key_id, _, secret = raw_token.partition(".")
    return boto3.client(
        "sqs",
        endpoint_url=f"{base}/sqs/",
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=30, connect_timeout=5),
    )


def _token(scopes: str = "produce,consume,admin", queues: str = "*") -> str:
    import secrets

    from queues.models import Token

    _t, raw = Token.issue(f"sqs-{secrets.token_hex(4)}", scopes.split(","), queues)
    return raw


@pytest.fixture
def sqs(sqs_server: str, transactional_db: None) -> Any:
    return _client(sqs_server, _token())


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


def _status(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _md5_attributes(attributes: dict[str, dict[str, Any]]) -> str:
    """SQS's attribute digest, written out from AWS's description."""
    buf = b""
    for name in sorted(attributes):
        a = attributes[name]
        value = a.get("StringValue")
        encoded = value.encode() if value is not None else a["BinaryValue"]
        for part in (name.encode(), a["DataType"].encode()):
            buf += struct.pack(">I", len(part)) + part
        buf += (b"\x01" if value is not None else b"\x02") + struct.pack(">I", len(encoded)) + encoded
    return hashlib.md5(buf).hexdigest()


# ------------------------------------------------------------------ queues --


def test_queue_lifecycle_create_get_url_list_attributes_delete(sqs: Any, sqs_server: str) -> None:
    url = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "45", "DelaySeconds": "0"})["QueueUrl"]
    assert url == f"{sqs_server}/sqs/orders"
    # Idempotent with the same attributes; refused with different ones.
    assert sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "45"})["QueueUrl"] == url
    with pytest.raises(ClientError) as exc:
        sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "10"})
    assert _code(exc) == "QueueAlreadyExists"
    sqs.create_queue(QueueName="orders-eu")
    sqs.create_queue(QueueName="billing")

    assert sqs.get_queue_url(QueueName="orders")["QueueUrl"] == url
    assert sqs.list_queues()["QueueUrls"] == [f"{sqs_server}/sqs/{n}" for n in ("billing", "orders", "orders-eu")]
    assert sqs.list_queues(QueueNamePrefix="orders")["QueueUrls"] == [url, f"{sqs_server}/sqs/orders-eu"]
    page = sqs.list_queues(MaxResults=2)
    assert len(page["QueueUrls"]) == 2 and "NextToken" in page
    rest = sqs.list_queues(MaxResults=2, NextToken=page["NextToken"])
    assert rest["QueueUrls"] == [f"{sqs_server}/sqs/orders-eu"] and "NextToken" not in rest
    assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix="nothing")

    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "45"
    assert attrs["MessageRetentionPeriod"] == "345600"  # SQS's default
    assert attrs["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:orders"
    assert attrs["ApproximateNumberOfMessages"] == "0"
    sqs.set_queue_attributes(
        QueueUrl=url, Attributes={"VisibilityTimeout": "5", "MaximumMessageSize": "2048", "MessageRetentionPeriod": "600"}
    )
    only = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout", "MaximumMessageSize"])
    assert only["Attributes"] == {"VisibilityTimeout": "5", "MaximumMessageSize": "2048"}
    with pytest.raises(ClientError) as exc:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "99999"})
    assert _code(exc) == "InvalidAttributeValue"
    with pytest.raises(ClientError) as exc:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"QueueArn": "x"})
    assert _code(exc) == "InvalidAttributeName"

    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(ClientError) as exc:
        sqs.get_queue_url(QueueName="orders")
    assert _code(exc) == "AWS.SimpleQueueService.NonExistentQueue"
    assert exc.value.response["Error"]["QueryErrorCode"] == "QueueDoesNotExist"
    assert _status(exc) == 400
    assert sqs.exceptions.QueueDoesNotExist is type(exc.value)


def test_dot_and_dot_dot_are_not_queue_names(sqs: Any) -> None:
    # The queue-name rule of the whole broker: such a queue could never be
    # opened in the dashboard.
    for name in (".", ".."):
        with pytest.raises(ClientError) as exc:
            sqs.create_queue(QueueName=name)
        assert _code(exc) == "InvalidParameterValue"
    assert sqs.create_queue(QueueName="...")["QueueUrl"].endswith("/sqs/...")


def test_missing_queue_error_has_sqs_shape(sqs_server: str, transactional_db: None) -> None:
    client = _client(sqs_server, _token())
    captured: dict[str, Any] = {}
    client.meta.events.register(
        "after-call.sqs.SendMessage",
        lambda http_response, **kw: captured.update(
            body=json.loads(http_response.content), headers=http_response.headers
        ),
    )
    with pytest.raises(client.exceptions.QueueDoesNotExist):
        client.send_message(QueueUrl=f"{sqs_server}/sqs/ghost", MessageBody="x")
    assert captured["body"]["__type"] == "com.amazonaws.sqs#QueueDoesNotExist"
    assert captured["body"]["message"] == "The specified queue does not exist."
    assert captured["headers"]["x-amzn-query-error"] == "AWS.SimpleQueueService.NonExistentQueue;Sender"


# ---------------------------------------------------------------- messages --


def test_send_receive_delete_round_trip_with_digests_and_attributes(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="mail")["QueueUrl"]
    body = '  {"not": "parsed"} \u2013 ünïcode ✓ \n\ttabs\U0001f600  '
    attributes = {
        "kind": {"DataType": "String", "StringValue": "welcome"},
        "attempt": {"DataType": "Number", "StringValue": "3"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01raw"},
    }
    sent = sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
    assert sent["MD5OfMessageBody"] == _md5(body)
    assert sent["MD5OfMessageAttributes"] == _md5_attributes(attributes)

    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    assert len(got) == 1
    message = got[0]
    assert message["Body"] == body
    assert message["MessageId"] == sent["MessageId"]
    assert message["MD5OfBody"] == _md5(body)
    assert message["MessageAttributes"] == attributes
    assert message["MD5OfMessageAttributes"] == _md5_attributes(attributes)
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert abs(int(message["Attributes"]["SentTimestamp"]) / 1000 - time.time()) < 120

    # Only the attributes asked for.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    again = sqs.receive_message(QueueUrl=url, AttributeNames=["ApproximateReceiveCount"], MessageAttributeNames=["kind"])
    [second] = again["Messages"]
    assert second["Attributes"] == {"ApproximateReceiveCount": "2"}
    assert second["MessageAttributes"] == {"kind": attributes["kind"]}
    assert second["MD5OfMessageAttributes"] == _md5_attributes({"kind": attributes["kind"]})

    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    with pytest.raises(ClientError) as exc:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    assert _code(exc) == "ReceiptHandleIsInvalid"


def test_send_batch_and_delete_batch_report_each_entry(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="batch")["QueueUrl"]
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "first"},
            {"Id": "b", "MessageBody": "second", "DelaySeconds": 0},
            {"Id": "bad", "MessageBody": "bell \x07 is not allowed"},
            {"Id": "c", "MessageBody": "third"},
        ],
    )
    assert [e["Id"] for e in result["Successful"]] == ["a", "b", "c"]
    assert [e["MD5OfMessageBody"] for e in result["Successful"]] == [_md5(b) for b in ("first", "second", "third")]
    assert result["Failed"] == [
        {"Id": "bad", "SenderFault": True, "Code": "InvalidMessageContents", "Message": result["Failed"][0]["Message"]}
    ]
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in got] == ["first", "second", "third"]
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        + [{"Id": "junk", "ReceiptHandle": "nope"}],
    )
    assert [e["Id"] for e in deleted["Successful"]] == ["d0", "d1", "d2"]
    assert [(e["Id"], e["Code"]) for e in deleted["Failed"]] == [("junk", "ReceiptHandleIsInvalid")]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesNotVisible"] == "0"

    for entries, code in [
        ([], "AWS.SimpleQueueService.EmptyBatchRequest"),
        ([{"Id": str(i), "MessageBody": "x"} for i in range(11)], "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
        ([{"Id": "same", "MessageBody": "x"}] * 2, "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
        ([{"Id": "has space", "MessageBody": "x"}], "AWS.SimpleQueueService.InvalidBatchEntryId"),
    ]:
        with pytest.raises(ClientError) as exc:
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert _code(exc) == code


def test_visibility_timeout_hides_and_change_visibility_controls_it(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="vis")["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "1", "MessageBody": "one"}, {"Id": "2", "MessageBody": "two"}])
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)["Messages"]
    assert len(got) == 2
    assert "Messages" not in sqs.receive_message(QueueUrl=url)  # hidden while leased
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attrs["Attributes"] == {"ApproximateNumberOfMessagesNotVisible": "2"}

    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"], VisibilityTimeout=900)
    result = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "back", "ReceiptHandle": got[1]["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "nope", "VisibilityTimeout": 0},
        ],
    )
    assert [e["Id"] for e in result["Successful"]] == ["back"]
    assert [(e["Id"], e["Code"]) for e in result["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]
    [visible] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["ApproximateReceiveCount"])["Messages"]
    assert visible["Body"] == "two" and visible["Attributes"]["ApproximateReceiveCount"] == "2"
    # The first receipt of "two" was superseded by the second receive.
    with pytest.raises(ClientError) as exc:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=got[1]["ReceiptHandle"], VisibilityTimeout=10)
    assert _code(exc) == "AWS.SimpleQueueService.MessageNotInflight"
    # ... and deleting with it succeeds without deleting (as SQS does).
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[1]["ReceiptHandle"])
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "2"
    with pytest.raises(ClientError) as exc:
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11)
    assert _code(exc) == "InvalidParameterValue"


def test_long_poll_receive_wakes_when_a_message_is_sent(sqs: Any, sqs_server: str) -> None:
    url = sqs.create_queue(QueueName="poll")["QueueUrl"]
    waiting = _client(sqs_server, _token())
    received: list[Any] = []
    started = threading.Event()

    def poll() -> None:
        started.set()
        received.append(waiting.receive_message(QueueUrl=url, WaitTimeSeconds=20))

    thread = threading.Thread(target=poll)
    thread.start()
    started.wait(5)
    time.sleep(0.5)  # let the receive reach its wait
    sqs.send_message(QueueUrl=url, MessageBody="wake up")
    thread.join(25)
    assert not thread.is_alive()
    assert [m["Body"] for m in received[0]["Messages"]] == ["wake up"]
    # With nothing to deliver, a short wait ends empty.
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)


def test_a_long_poll_receives_a_lapsed_message_again_without_the_monitor(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="lapse")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="once")
    [first] = sqs.receive_message(QueueUrl=url, VisibilityTimeout=1)["Messages"]
    started = time.monotonic()
    # Waiting when the lease runs out: the server's watch wakes it (this
    # server runs no monitor), and its receive takes the lease back.
    [again] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10, AttributeNames=["ApproximateReceiveCount"])["Messages"]
    assert time.monotonic() - started < 4
    assert again["MessageId"] == first["MessageId"] and again["Attributes"]["ApproximateReceiveCount"] == "2"
    with pytest.raises(ClientError) as exc:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=10)
    assert _code(exc) == "AWS.SimpleQueueService.MessageNotInflight"


def test_purge_queue_deletes_every_message(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="purge-me")["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(5)])
    sqs.purge_queue(QueueUrl=url)
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"


# -------------------------------------------------------------------- fifo --


def test_fifo_queue_orders_groups_and_deduplicates(sqs: Any) -> None:
    with pytest.raises(ClientError) as exc:
        sqs.create_queue(QueueName="no-suffix", Attributes={"FifoQueue": "true"})
    assert _code(exc) == "InvalidParameterValue"
    url = sqs.create_queue(QueueName="jobs.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"])["Attributes"] == {"FifoQueue": "true"}

    first = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="A", MessageDeduplicationId="a1")
    retry = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="A", MessageDeduplicationId="a1")
    assert retry["MessageId"] == first["MessageId"]
    assert first["SequenceNumber"].isdigit()
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a2", "MessageBody": "a2", "MessageGroupId": "A", "MessageDeduplicationId": "a2"},
            {"Id": "b1", "MessageBody": "b1", "MessageGroupId": "B", "MessageDeduplicationId": "b1"},
        ],
    )
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"])["Messages"]
    # One message per group in flight: a2 waits for a1.
    assert sorted(m["Body"] for m in got) == ["a1", "b1"]
    a1 = next(m for m in got if m["Body"] == "a1")
    assert a1["Attributes"]["MessageGroupId"] == "A"
    assert a1["Attributes"]["MessageDeduplicationId"] == "a1"
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=a1["ReceiptHandle"])
    [a2] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert a2["Body"] == "a2"

    with pytest.raises(ClientError) as exc:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="x")
    assert _code(exc) == "MissingParameter"
    with pytest.raises(ClientError) as exc:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="A")
    assert _code(exc) == "InvalidParameterValue"


def test_redrive_policy_moves_exhausted_messages_to_the_dead_letter_queue(sqs: Any) -> None:
    dlq_url = sqs.create_queue(QueueName="work-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    url = sqs.create_queue(QueueName="work", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    assert json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]) == {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": 2,
    }
    assert sqs.list_dead_letter_source_queues(QueueUrl=dlq_url)["queueUrls"] == [url]
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    for _ in range(2):
        [m] = sqs.receive_message(QueueUrl=url)["Messages"]
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    [dead] = sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert dead["Body"] == "poison"

    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": ""})
    assert "RedrivePolicy" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


# -------------------------------------------------------------------- auth --


def test_bad_signature_is_refused_like_sqs(sqs_server: str, transactional_db: None) -> None:
    raw = _token()
    key_id, _, secret = raw.partition(".")
    wrong = _client(sqs_server, f"{key_id}.{secret}x")
    with pytest.raises(ClientError) as exc:
        wrong.list_queues()
    assert (_code(exc), _status(exc)) == ("SignatureDoesNotMatch", 403)

    unknown = _client(sqs_server, f"mq0000000000000000.{secret}")
    with pytest.raises(ClientError) as exc:
        unknown.list_queues()
    assert (_code(exc), _status(exc)) == ("InvalidClientTokenId", 403)

    from django.utils import timezone

    from queues.models import Token

    Token.objects.filter(key_id=key_id).update(revoked_at=timezone.now())
    with pytest.raises(ClientError) as exc:
        _client(sqs_server, raw).list_queues()
    assert _code(exc) == "InvalidClientTokenId"

    # Unsigned requests are refused too.
    request = urllib.request.Request(
        f"{sqs_server}/sqs/",
        data=b"{}",
        headers={"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"},
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request, timeout=10)
    assert http.value.code == 403
    assert http.value.headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"


def test_token_scopes_and_queue_patterns_apply(sqs: Any, sqs_server: str) -> None:
    url = sqs.create_queue(QueueName="orders-1")["QueueUrl"]
    sqs.create_queue(QueueName="private")
    producer = _client(sqs_server, _token("produce", "orders-*"))
    producer.send_message(QueueUrl=url, MessageBody="hi")
    with pytest.raises(ClientError) as exc:
        producer.receive_message(QueueUrl=url)
    assert (_code(exc), _status(exc)) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as exc:
        producer.create_queue(QueueName="orders-2")
    assert _code(exc) == "AccessDenied"
    with pytest.raises(ClientError) as exc:
        producer.send_message(QueueUrl=f"{sqs_server}/sqs/private", MessageBody="hi")
    assert _code(exc) == "AccessDenied"
    assert producer.list_queues()["QueueUrls"] == [url]

    consumer = _client(sqs_server, _token("consume", "orders-*"))
    [m] = consumer.receive_message(QueueUrl=url)["Messages"]
    consumer.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    with pytest.raises(ClientError) as exc:
        consumer.purge_queue(QueueUrl=url)
    assert _code(exc) == "AccessDenied"


def test_unsupported_actions_and_attributes_are_refused_clearly(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="plain")["QueueUrl"]
    with pytest.raises(ClientError) as exc:
        sqs.tag_queue(QueueUrl=url, Tags={"team": "x"})
    assert _code(exc) == "AWS.SimpleQueueService.UnsupportedOperation"
    with pytest.raises(ClientError) as exc:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": "{}"})
    assert _code(exc) == "InvalidAttributeName"
    with pytest.raises(ClientError) as exc:
        sqs.create_queue(QueueName="sized", Attributes={"MaximumMessageSize": "12"})
    assert _code(exc) == "InvalidAttributeValue"
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"MaximumMessageSize": "1024"})
    with pytest.raises(ClientError) as exc:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1025)
    assert _code(exc) == "InvalidParameterValue"


def test_signature_dated_outside_the_clock_window_is_refused(
    sqs_server: str, transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    import botocore.auth

    client = _client(sqs_server, _token())
    stale = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **kw: stale)
    with pytest.raises(ClientError) as exc:
        client.list_queues()
    assert (_code(exc), _status(exc)) == ("SignatureDoesNotMatch", 403)
    assert "Signature expired" in exc.value.response["Error"]["Message"]


def test_token_without_a_sealed_secret_cannot_sign(sqs_server: str, transactional_db: None) -> None:
    from queues.models import Token

    raw = _token()
    Token.objects.filter(key_id=raw.partition(".")[0]).update(secret_sealed=None)
    with pytest.raises(ClientError) as exc:
        _client(sqs_server, raw).list_queues()
    assert _code(exc) == "InvalidClientTokenId"
    assert "mq token create" in exc.value.response["Error"]["Message"]


def test_token_secret_is_sealed_with_secret_key_and_fallbacks(db: None) -> None:
    from django.test import override_settings

    from queues.models import Token

    token, raw = Token.issue("sealed", ["produce"])
    secret = raw.partition(".")[2]
    assert secret not in token.secret_sealed
    assert token.signing_secret() == secret
    with override_settings(SECRET_KEY="rotated-" + "x" * 50):
        assert token.signing_secret() is None
    from django.conf import settings

    with override_settings(SECRET_KEY="rotated-" + "x" * 50, SECRET_KEY_FALLBACKS=[settings.SECRET_KEY]):
        assert token.signing_secret() == secret


def test_repeated_bad_signatures_from_one_address_are_throttled(db: None) -> None:
    from django.test import Client

    from queues.api.auth import AUTH_FAILURES_ALLOWED, forget

    forget()
    client = Client(REMOTE_ADDR="10.9.8.7")
    headers = {
        "X-Amz-Target": "AmazonSQS.ListQueues",
        "Authorization": "AWS4-HMAC-SHA256 Credential=mqnope/20260101/us-east-1/sqs/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
    }
    try:
        for _ in range(AUTH_FAILURES_ALLOWED):
            r = client.post("/sqs/", b"{}", content_type="application/x-amz-json-1.0", headers=headers)
            assert r["x-amzn-query-error"] in ("InvalidClientTokenId;Sender", "SignatureDoesNotMatch;Sender")
        r = client.post("/sqs/", b"{}", content_type="application/x-amz-json-1.0", headers=headers)
        assert r.status_code == 429
        assert r["x-amzn-query-error"] == "RequestThrottled;Sender"
        assert json.loads(r.content)["__type"] == "com.amazonaws.sqs#RequestThrottled"
    finally:
        forget()


def test_boto3_resource_api_works_unchanged(sqs_server: str, transactional_db: None) -> None:
    key_id, _, secret = _token().partition(".")
    resource = boto3.resource(
        "sqs",
        endpoint_url=f"{sqs_server}/sqs/",
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )
    queue = resource.create_queue(QueueName="resource", Attributes={"DelaySeconds": "0"})
    assert resource.get_queue_by_name(QueueName="resource").url == queue.url
    assert queue.attributes["QueueArn"].endswith(":resource")
    queue.send_messages(Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)])
    messages = queue.receive_messages(MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert sorted(m.body for m in messages) == ["m0", "m1", "m2"]
    for message in messages:
        message.delete()
    queue.reload()
    assert queue.attributes["ApproximateNumberOfMessages"] == "0"
    assert [q.url for q in resource.queues.filter(QueueNamePrefix="res")] == [queue.url]
    queue.delete()


# Last in this module: it leaves the live server's brake on for this address.
def test_a_throttled_address_still_signs_in_and_the_throttle_reads_too_many_requests(
    sqs_server: str, transactional_db: None
) -> None:
    from queues.api.auth import AUTH_FAILURES_ALLOWED

    valid = _client(sqs_server, _token())
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "AmazonSQS.ListQueues",
        "Authorization": "AWS4-HMAC-SHA256 Credential=mqnobody/20260101/us-east-1/sqs/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
    }
    refused: list[tuple[int, str]] = []
    # (Earlier tests of this module failed from this address too.)
    while len(refused) <= AUTH_FAILURES_ALLOWED and (not refused or refused[-1][0] != 429):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(f"{sqs_server}/sqs/", b"{}", headers), timeout=10)
        refused.append((exc.value.code, exc.value.reason))
    assert set(refused[:-1]) == {(403, "Forbidden")}
    # daphne writes the status line from Twisted's table, which lacks 429.
    assert refused[-1] == (429, "Too Many Requests")
    assert valid.list_queues()["ResponseMetadata"]["HTTPStatusCode"] == 200
