"""A backend for Django's tasks framework (``django.tasks``) that enqueues
into mqadmin, and the worker side that runs what was enqueued.

    TASKS = {"default": {"BACKEND": "queues.tasks.MQBackend",
                         "QUEUES": ["default", "emails"],          # optional
                         "OPTIONS": {"QUEUE_PREFIX": "tasks-"}}}   # optional

- A task's ``queue_name`` is the mqadmin queue ``<QUEUE_PREFIX><queue_name>``
  (``tasks-default``), created with default settings on first use.
- ``priority`` (-100..100) maps onto mqadmin's 0..9, keeping the order;
  ``run_after`` becomes the message's delay.
- ``enqueue()`` writes the message and the task's result record through the
  broker in the caller's transaction: enqueued inside ``transaction.atomic()``
  the task exists if and only if the application's data commits. Workers are
  woken, and ``task_enqueued`` is sent, only on commit.
- ``get_result()`` reads the result record (``TaskRecord``): READY until a
  worker starts it, RUNNING, then SUCCESSFUL with the return value or FAILED
  with the exception class and traceback.

Running tasks: ``run_pending()`` receives, runs and acks in this process;
``handle_message`` is the handler for ``mq worker --tasks`` (the mqclient
worker acks after it returns). The outcome is recorded before the ack, and a
redelivered message whose task already finished is acked without running it
again, so a crash between the two never runs a task twice to completion.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from django.db import transaction
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import broker
from .exceptions import QueueNotFound
from .models import QUEUE_NAME_RULE, Queue, TaskRecord, is_queue_name

log = logging.getLogger("queues.tasks")

DEFAULT_QUEUE_PREFIX = "tasks-"
MQ_MAX_PRIORITY = 9

S = TaskResultStatus


def mq_priority(priority: int) -> int:
    """Django's -100..100 onto mqadmin's 0..9, order kept (0 -> 4)."""
    return (priority - TASK_MIN_PRIORITY) * MQ_MAX_PRIORITY // (TASK_MAX_PRIORITY - TASK_MIN_PRIORITY)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


class MQBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.queue_prefix: str = self.options.get("QUEUE_PREFIX", DEFAULT_QUEUE_PREFIX)

    def queue_for(self, queue_name: str) -> str:
        """The mqadmin queue behind a task queue name."""
        return f"{self.queue_prefix}{queue_name}"

    def check(self, **kwargs: Any) -> list[Any]:
        from django.core.checks import Error

        problems = []
        for name in sorted(self.queues):
            if not is_queue_name(self.queue_for(name)):
                problems.append(
                    Error(
                        f"Task queue {name!r} of backend {self.alias!r} makes the mqadmin queue name "
                        f"{self.queue_for(name)!r}, which is not {QUEUE_NAME_RULE}",
                        id="queues.E001",
                    )
                )
        return problems

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: dict[str, Any]) -> TaskResult:
        self.validate_task(task)
        now = timezone.now()
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=get_random_string(32),
            status=S.READY,
            enqueued_at=now,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        delay = None
        if task.run_after is not None:
            delay = max(0, math.ceil((task.run_after - now).total_seconds()))
        body = orjson.dumps({"task": task.module_path, "result_id": result.id, "args": result.args, "kwargs": result.kwargs})
        # Nested in the caller's transaction when there is one (a savepoint):
        # the message and its record commit or roll back with the caller's data.
        with transaction.atomic():
            queue = self._queue(task.queue_name)
            [published] = broker.publish(queue, [broker.NewMessage(body=body, priority=mq_priority(task.priority), delay=delay)])
            TaskRecord.objects.create(
                id=result.id,
                backend=self.alias,
                task_path=task.module_path,
                queue_name=task.queue_name,
                priority=task.priority,
                takes_context=task.takes_context,
                run_after=task.run_after,
                args=result.args,
                kwargs=result.kwargs,
                status=S.READY,
                message_id=int(published.id),
                enqueued_at=now,
            )
            transaction.on_commit(lambda: task_enqueued.send(type(self), task_result=result))
        return result

    def _queue(self, queue_name: str) -> Queue:
        name = self.queue_for(queue_name)
        try:
            return broker.get_queue(name)
        except QueueNotFound:
            queue, _created = broker.put_queue(name, {})
            return queue

    def get_result(self, result_id: str) -> TaskResult:
        record = TaskRecord.objects.filter(pk=result_id, backend=self.alias).first()
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        return self._result(record)

    def _result(self, record: TaskRecord) -> TaskResult:
        task = _load_task(record.task_path)
        task = dataclasses.replace(
            task,
            priority=record.priority,
            queue_name=record.queue_name,
            run_after=record.run_after,
            backend=self.alias,
            takes_context=record.takes_context,
        )
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=record.id,
            status=S(record.status),
            enqueued_at=record.enqueued_at,
            started_at=record.started_at,
            last_attempted_at=record.last_attempted_at,
            finished_at=record.finished_at,
            args=record.args,
            kwargs=record.kwargs,
            backend=self.alias,
            errors=[TaskError(**e) for e in record.errors],
            worker_ids=list(record.worker_ids),
        )
        object.__setattr__(result, "_return_value", record.return_value)
        return result


def _load_task(path: str) -> Task:
    task = import_string(path)
    if not isinstance(task, Task):
        raise InvalidTask(f"{path!r} is not a task (decorate it with @django.tasks.task).")
    return task


# --------------------------------------------------------------------------- #
# Running tasks
# --------------------------------------------------------------------------- #


def run_task_message(body: dict[str, Any] | str | bytes, *, worker_id: str | None = None) -> str | None:
    """Run the task a message describes and record its outcome. Returns the
    final status (SUCCESSFUL or FAILED), or None when there was nothing to
    run (the record is gone, or a redelivery of a task already finished).

    A task that raises is recorded FAILED and not retried (``django.tasks``
    has no retries); this function raises only when the database does, so
    the caller should then give the message back rather than ack it."""
    data = orjson.loads(body) if isinstance(body, (str, bytes)) else body
    result_id = data.get("result_id") if isinstance(data, dict) else None
    if not isinstance(result_id, str):
        log.warning("not a task message (no result_id): %.200r", body)
        return None
    worker_id = worker_id or default_worker_id()
    with transaction.atomic():
        record = TaskRecord.objects.select_for_update().filter(pk=result_id).first()
        if record is None:
            log.warning("task result %s no longer exists; dropping its message", result_id)
            return None
        if record.finished:
            # A redelivery after a crash between recording and the ack.
            return None
        record.claim(worker_id)
    backend = task_backends[record.backend]
    try:
        if not isinstance(backend, MQBackend):
            raise InvalidTask(f"TASKS[{record.backend!r}] is not queues.tasks.MQBackend.")
        result = backend._result(record)  # imports the task: may fail
    except Exception as exc:
        return _finish(result_id, error=exc)
    task_started.send(type(backend), task_result=result)
    try:
        if result.task.takes_context:
            value = result.task.call(TaskContext(task_result=result), *record.args, **record.kwargs)
        else:
            value = result.task.call(*record.args, **record.kwargs)
        value = normalize_json(value)
        orjson.dumps(value)  # refuse what the JSON field could not store
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the task's failure is its result, whatever it is
        status = _finish(result_id, error=exc)
    else:
        status = _finish(result_id, value=value)
    task_finished.send(type(backend), task_result=backend.get_result(result_id))
    return status


def _finish(result_id: str, *, value: Any = None, error: BaseException | None = None) -> str:
    """Record a run's outcome: FAILED with ``error``, else SUCCESSFUL with
    ``value``. Returns the status."""
    with transaction.atomic():
        record = TaskRecord.objects.select_for_update().get(pk=result_id)
        if error is not None:
            record.set_failed(error)
        else:
            record.set_successful(value)
    return record.status


def handle_message(message: Any) -> None:
    """The handler for ``mq worker --tasks``: an mqclient ``Message`` (its
    ``body`` is the decoded JSON). Returns normally once the outcome is
    recorded, so the worker acks; raises only when the database failed, so
    the worker nacks and the task is retried."""
    run_task_message(message.body)


def task_queue_names(alias: str = "default") -> list[str]:
    """The mqadmin queues a worker for this tasks backend should consume."""
    backend = task_backends[alias]
    if not isinstance(backend, MQBackend):
        raise InvalidTask(f"TASKS[{alias!r}] is not queues.tasks.MQBackend.")
    return [backend.queue_for(name) for name in sorted(backend.queues)]


def run_pending(
    *,
    alias: str = "default",
    queue_names: Iterable[str] | None = None,
    max_tasks: int = 100,
    worker_id: str | None = None,
    consumer_id: str | None = None,
    visibility_timeout: int | None = None,
) -> int:
    """Receive and run up to ``max_tasks`` ready tasks of a tasks backend in
    this process, acking each as its outcome is recorded. Returns how many
    ran. ``queue_names`` are task queue names (default: the backend's)."""
    backend = task_backends[alias]
    if not isinstance(backend, MQBackend):
        raise InvalidTask(f"TASKS[{alias!r}] is not queues.tasks.MQBackend.")
    worker_id = worker_id or default_worker_id()
    ran = 0
    for name in sorted(queue_names if queue_names is not None else backend.queues):
        try:
            queue = broker.get_queue(backend.queue_for(name))
        except QueueNotFound:
            continue  # nothing was ever enqueued there
        while ran < max_tasks:
            deliveries = broker.receive(
                queue,
                # One at a time, so no task waits leased behind a slow one.
                max_messages=1,
                visibility_timeout=visibility_timeout,
                consumer_id=consumer_id,
            )
            if not deliveries:
                break
            [delivery] = deliveries
            if run_task_message(delivery.body, worker_id=worker_id) is not None:
                ran += 1
            broker.ack(queue, [delivery.receipt])
    return ran
