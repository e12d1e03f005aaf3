"""The models' own rules: the queue-name rule, and the single-row transitions
of tokens, consumers and task records, each a conditional update that
settles its race."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.tasks import TaskResultStatus
from django.utils import timezone

from queues import broker
from queues.exceptions import InvalidValue
from queues.models import (
    LAST_USED_RESOLUTION_SECONDS,
    Consumer,
    ConsumerStatus,
    Queue,
    TaskRecord,
    Token,
    is_queue_name,
    validate_queue_name,
)

T0 = 1_900_000_000.0

# ------------------------------------------------------------ queue names --


@pytest.mark.parametrize("name", ["a", "A-Z_0.9", "x" * 80, "orders.v2", "-", "...", ".hidden", "a.."])
def test_queue_names_that_are_allowed(name: str) -> None:
    assert is_queue_name(name)
    validate_queue_name(name)


@pytest.mark.parametrize("name", [".", "..", "", "x" * 81, "has space", "ümlaut", "a/b", "x\n", ".\n"])
def test_queue_names_that_are_refused(name: str) -> None:
    assert not is_queue_name(name)
    with pytest.raises(ValidationError):
        validate_queue_name(name)


@pytest.mark.parametrize("name", [".", ".."])
def test_the_queue_model_refuses_dot_and_dot_dot(db: None, name: str) -> None:
    # The admin's form and broker.put_queue both validate through the model.
    with pytest.raises(ValidationError) as caught:
        Queue(name=name).full_clean()
    assert "name" in caught.value.message_dict
    with pytest.raises(InvalidValue, match=r"not \. or \.\."):
        broker.put_queue(name, {})
    assert not Queue.objects.exists()


# ----------------------------------------------------------------- tokens --


def test_revoke_is_once_and_keeps_the_first_time(db: None) -> None:
    token, _raw = Token.issue("ci", ["admin"])
    assert token.revoke() is True
    first = Token.objects.get(pk=token.pk).revoked_at
    assert first is not None and token.revoked_at == first
    again = Token.objects.get(pk=token.pk)
    assert again.revoke() is False
    assert Token.objects.get(pk=token.pk).revoked_at == first
    assert not Token.objects.active().exists()


def test_touch_writes_last_used_at_at_most_once_per_resolution(db: None) -> None:
    token, _raw = Token.issue("ci", ["admin"])
    t0 = timezone.now()
    token.touch(t0)
    assert Token.objects.get(pk=token.pk).last_used_at == t0
    token.touch(t0 + dt.timedelta(seconds=LAST_USED_RESOLUTION_SECONDS / 2))
    assert Token.objects.get(pk=token.pk).last_used_at == t0
    later = t0 + dt.timedelta(seconds=LAST_USED_RESOLUTION_SECONDS + 1)
    token.touch(later)
    assert Token.objects.get(pk=token.pk).last_used_at == later == token.last_used_at


# -------------------------------------------------------------- consumers --


def consumer(timeout: int = 15, last: float = T0) -> Consumer:
    return Consumer.objects.create(name="w", heartbeat_timeout=timeout, registered_at=last, last_heartbeat=last)


def stored(c: Consumer) -> tuple[str, float, float | None]:
    row = Consumer.objects.get(pk=c.pk)
    return row.status, row.last_heartbeat, row.dead_at


def test_a_beat_makes_a_suspect_alive_but_not_one_that_left(db: None) -> None:
    c = consumer()
    assert c.mark_suspect() is True
    assert c.beat(T0 + 5) is True
    assert stored(c) == (ConsumerStatus.ALIVE, T0 + 5, None)
    c.leave(T0 + 6)
    assert c.beat(T0 + 7) is False
    assert stored(c) == (ConsumerStatus.LEFT, T0 + 5, T0 + 6)


def test_mark_suspect_loses_to_a_beat_that_landed_since_it_read(db: None) -> None:
    c = consumer()
    Consumer.objects.get(pk=c.pk).beat(T0 + 1)  # another process's beat
    assert c.mark_suspect() is False
    assert stored(c)[0] == ConsumerStatus.ALIVE


def test_declare_dead_only_when_silent_past_its_timeout(db: None) -> None:
    c = consumer(timeout=10)
    assert c.declare_dead(T0 + 5) is False  # not silent long enough
    assert stored(c) == (ConsumerStatus.ALIVE, T0, None)
    Consumer.objects.get(pk=c.pk).beat(T0 + 8)  # a late beat wins the race
    assert c.declare_dead(T0 + 11) is False
    assert c.declare_dead(T0 + 19) is True
    assert stored(c) == (ConsumerStatus.DEAD, T0 + 8, T0 + 19)
    assert c.declare_dead(T0 + 30) is False  # dead once


def test_consumer_to_dict_has_what_the_api_and_the_dashboard_show(db: None) -> None:
    c = consumer()
    c.leave(T0 + 1)
    assert c.to_dict(3) == {
        "id": c.id,
        "name": "w",
        "queues": [],
        "status": "left",
        "last_heartbeat": "2030-03-17T17:46:40Z",
        "heartbeat_timeout": 15,
        "dead_at": "2030-03-17T17:46:41Z",
        "in_flight": 3,
        "meta": {},
    }


# ----------------------------------------------------------- task records --


def record() -> TaskRecord:
    return TaskRecord.objects.create(
        id="r1", backend="default", task_path="x.y", queue_name="default", status=TaskResultStatus.READY, enqueued_at=timezone.now()
    )


def test_a_claimed_task_runs_then_succeeds(db: None) -> None:
    r = record()
    assert not r.finished
    r.claim("w1")
    r.claim("w2")  # again, after w1 crashed
    row = TaskRecord.objects.get(pk="r1")
    assert (row.status, row.worker_ids) == (TaskResultStatus.RUNNING, ["w1", "w2"])
    assert row.started_at is not None and row.started_at <= row.last_attempted_at  # type: ignore[operator]
    r.set_successful({"ok": 1})
    row = TaskRecord.objects.get(pk="r1")
    assert (row.status, row.return_value, row.finished) == (TaskResultStatus.SUCCESSFUL, {"ok": 1}, True)
    assert row.finished_at is not None


def test_a_failed_task_keeps_each_error(db: None) -> None:
    r = record()
    r.claim("w1")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        r.set_failed(exc)
    row = TaskRecord.objects.get(pk="r1")
    assert row.status == TaskResultStatus.FAILED and row.finished
    [error] = row.errors
    assert error["exception_class_path"] == "builtins.ValueError"
    assert "boom" in error["traceback"]
