"""Celery task definitions: thin, carrying ids only. Each task's work lives in its stage's
module (steps, sender, scheduler); publishing is drip.timer.publish, which names these tasks, so
nothing imports this module but Celery. Every task claims its rows before acting, so each
is safe to run twice (acks_late + reject_on_worker_lost are set globally in settings)."""
from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import task_prerun
from django.db import connections

from drip.delivery import sender, verify
from drip.doors.console import jobs
from drip.engine import steps
from drip.timer import failover, publish, scheduler


@task_prerun.connect
def drop_broken_db_connections(**kwargs: Any) -> None:
    """Workers keep their database connection across tasks (CELERY_DB_REUSE_MAX); one that
    broke (a database restart) is dropped here, so only the task that met the break fails
    (its row is still claimable and the reconciler retries it), not every task after it."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred and not conn.is_usable():
            conn.close()


@shared_task(name=publish.RUN_STEPS)
def run_steps(step_ids: list[int]) -> None:
    steps.run_step_batch(step_ids)


@shared_task(name=publish.SEND_MESSAGES)
def send_messages(message_ids: list[int]) -> None:
    sender.send_batch(message_ids)


@shared_task(name=publish.RUN_CONSOLE_JOB)
def run_console_job(job_ids: list[int]) -> None:
    for job_id in job_ids:
        jobs.run_job(job_id)


@shared_task(name=publish.VERIFY_MESSAGES)
def verify_messages(message_ids: list[int]) -> None:
    verify.verify_batch(message_ids)


@shared_task(name="drip.tasks.dispatch_due_steps")
def dispatch_due_steps() -> int:
    return scheduler.dispatch_due_steps()


@shared_task(name="drip.tasks.reconcile")
def reconcile() -> dict[str, int]:
    return scheduler.reconcile()


@shared_task(name="drip.tasks.fail_over_dead_workers")
def fail_over_dead_workers() -> dict[str, int]:
    return failover.fail_over_dead_workers()
