"""Task records: the django.tasks backend's results.
"""

from __future__ import annotations

import datetime as dt
from traceback import format_exception
from typing import Any

from django.db import models
from django.tasks import TaskResultStatus
from django.utils import timezone


class TaskRecord(models.Model):
    """The result of one ``django.tasks`` task enqueued into mqadmin: what
    ``get_result()`` reports. The work itself travels as a message."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    backend = models.CharField(max_length=100)
    task_path = models.CharField(max_length=300)
    queue_name = models.CharField(max_length=80)
    priority = models.SmallIntegerField(default=0)
    takes_context = models.BooleanField(default=False)
    run_after = models.DateTimeField(null=True, blank=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    # django.tasks.TaskResultStatus values: READY, RUNNING, FAILED, SUCCESSFUL.
    status = models.CharField(max_length=10, default="READY")
    message_id = models.BigIntegerField(null=True, blank=True)
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    return_value = models.JSONField(null=True, blank=True)
    # [{"exception_class_path": ..., "traceback": ...}], one per failed attempt.
    errors = models.JSONField(default=list, blank=True)
    worker_ids = models.JSONField(default=list, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "enqueued_at"], name="mq_task_status")]

    def __str__(self) -> str:
        return f"task {self.task_path} {self.id} ({self.status})"

    # Single-row transitions, as django-tasks' DBTaskResult has them. The
    # caller holds the row locked (select_for_update) in a transaction.

    @property
    def finished(self) -> bool:
        return self.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)

    def claim(self, worker_id: str, now: dt.datetime | None = None) -> None:
        """A worker starts the task (again, after a crash): RUNNING."""
        now = timezone.now() if now is None else now
        self.status = TaskResultStatus.RUNNING
        self.started_at = self.started_at or now
        self.last_attempted_at = now
        self.worker_ids = [*self.worker_ids, worker_id]
        self.save(update_fields=["status", "started_at", "last_attempted_at", "worker_ids"])

    def set_successful(self, return_value: Any) -> None:
        """The task returned ``return_value`` (JSON): SUCCESSFUL."""
        self.status = TaskResultStatus.SUCCESSFUL
        self.finished_at = timezone.now()
        self.return_value = return_value
        self.save(update_fields=["status", "finished_at", "return_value"])

    def set_failed(self, error: BaseException) -> None:
        """The task raised ``error``: FAILED, with the exception's class and
        traceback added to ``errors``."""
        kind = type(error)
        self.status = TaskResultStatus.FAILED
        self.finished_at = timezone.now()
        self.errors = [
            *self.errors,
            {"exception_class_path": f"{kind.__module__}.{kind.__qualname__}", "traceback": "".join(format_exception(error))},
        ]
        self.save(update_fields=["status", "finished_at", "errors"])
