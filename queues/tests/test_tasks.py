"""The ``django.tasks`` backend: enqueue through ``django.tasks`` into
mqadmin, run with the in-process worker, read results back."""

from __future__ import annotations

import datetime as dt
import threading
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, task
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.test import override_settings
from django.utils import timezone

from queues import broker
from queues.models import Message, TaskRecord
from queues.states import MessageState
from queues.tasks import handle_message, mq_priority, run_pending, task_queue_names

MQ_TASKS = {"default": {"BACKEND": "queues.tasks.MQBackend", "QUEUES": ["default", "emails"]}}

ran: list[Any] = []
ran_lock = threading.Lock()


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def record(label: str) -> str:
    with ran_lock:
        ran.append(label)
    return label


@task
def explode(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def attempt(context: Any) -> int:
    return context.attempt


@task
async def async_double(x: int) -> int:
    return 2 * x


@task
def not_json() -> object:
    return object()


@pytest.fixture
def mq_tasks(transactional_db: None) -> Any:
    ran.clear()
    with override_settings(TASKS=MQ_TASKS):
        yield


def test_enqueued_task_runs_and_reports_its_result(mq_tasks: None) -> None:
    result = add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert add.get_result(result.id).status == TaskResultStatus.READY
    [message] = Message.objects.filter(queue__name="tasks-default")
    assert orjson.loads(message.body) == {"task": add.module_path, "result_id": result.id, "args": [2, 3], "kwargs": {}}

    assert run_pending() == 1
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1 and result.worker_ids
    assert result.started_at <= result.finished_at
    assert not Message.objects.filter(queue__name="tasks-default").exists()  # acked
    assert run_pending() == 0


def test_failing_task_records_exception_and_traceback(mq_tasks: None) -> None:
    result = explode.enqueue("kaboom")
    assert run_pending() == 1
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class is ValueError
    assert "kaboom" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    # Not retried: recorded and acked.
    assert not Message.objects.exists()


def test_unserialisable_return_value_fails_the_task(mq_tasks: None) -> None:
    result = not_json.enqueue()
    run_pending()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError


def test_priority_orders_work_and_queue_name_picks_the_queue(mq_tasks: None) -> None:
    record.using(priority=-50).enqueue("low")
    record.using(priority=100).enqueue("urgent")
    record.enqueue("normal")
    record.using(queue_name="emails").enqueue("email")
    assert set(Message.objects.values_list("queue__name", flat=True)) == {"tasks-default", "tasks-emails"}
    assert [mq_priority(p) for p in (-100, -50, 0, 50, 100)] == [0, 2, 4, 6, 9]

    assert run_pending(queue_names=["default"]) == 3
    assert ran == ["urgent", "normal", "low"]
    assert run_pending(queue_names=["emails"]) == 1
    assert ran[-1] == "email"
    assert task_queue_names() == ["tasks-default", "tasks-emails"]


def test_run_after_becomes_a_delay(mq_tasks: None) -> None:
    result = add.using(run_after=timezone.now() + dt.timedelta(seconds=60)).enqueue(1, 1)
    [message] = Message.objects.all()
    assert message.state == MessageState.DELAYED
    assert 55 <= message.visible_at - time.time() <= 61
    assert run_pending() == 0
    assert add.get_result(result.id).status == TaskResultStatus.READY
    assert add.get_result(result.id).task.run_after is not None


def test_enqueue_rolls_back_with_the_application_transaction(mq_tasks: None) -> None:
    from django.contrib.auth.models import User

    enqueued: list[str] = []

    def on_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
        enqueued.append(task_result.id)

    task_enqueued.connect(on_enqueued)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            User.objects.create(username="alice")
            lost = add.enqueue(1, 2)
            raise RuntimeError("the view failed")
        assert not User.objects.exists()
        assert not Message.objects.exists()
        with pytest.raises(TaskResultDoesNotExist):
            add.get_result(lost.id)
        assert enqueued == []

        with transaction.atomic():
            User.objects.create(username="bob")
            kept = add.enqueue(1, 2)
            # Announced only once the application's data is committed.
            assert enqueued == []
        assert enqueued == [kept.id]
    finally:
        task_enqueued.disconnect(on_enqueued)
    assert run_pending() == 1
    assert add.get_result(kept.id).return_value == 3


def test_context_and_async_tasks_run(mq_tasks: None) -> None:
    first = attempt.enqueue()
    second = async_double.enqueue(21)
    assert run_pending() == 2
    assert attempt.get_result(first.id).return_value == 1
    assert async_double.get_result(second.id).return_value == 42


def test_worker_handler_runs_once_even_when_redelivered(mq_tasks: None) -> None:
    result = record.enqueue("once")
    queue = broker.get_queue("tasks-default")
    [delivery] = broker.receive(queue)
    message = SimpleNamespace(body=orjson.loads(delivery.body), receipt=delivery.receipt)
    handle_message(message)
    # The worker crashed before its ack: the redelivery must not run it again.
    handle_message(message)
    assert ran == ["once"]
    assert record.get_result(result.id).status == TaskResultStatus.SUCCESSFUL


def test_unknown_result_id_does_not_exist(mq_tasks: None) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result("no-such-result")


def test_concurrent_workers_run_each_task_exactly_once(mq_tasks: None) -> None:
    labels = [f"job-{i}" for i in range(30)]
    for label in labels:
        record.enqueue(label)
    counts: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        from django.db import connection

        try:
            counts.append(run_pending(max_tasks=100))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(counts) == 30
    assert sorted(ran) == sorted(labels)
    assert TaskRecord.objects.filter(status=TaskResultStatus.SUCCESSFUL).count() == 30
