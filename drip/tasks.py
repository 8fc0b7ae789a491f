"""Celery tasks, and the one place that publishes them. Tasks carry ids only; every one
claims its rows before acting, so each is safe to run twice (acks_late +
reject_on_worker_lost are set globally in settings).

Work travels in batches: a step task takes the steps due at one instant (every
registration's reminder of an event), a send task a list of messages. A batch costs one
claim, one load and one consent read instead of one of each per row, and one task instead of
one per row: that is what lets a worker keep up with a large event (bench/README.md).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from celery import shared_task
from celery.signals import task_prerun
from celery.utils.functional import chunks
from django.conf import settings
from django.db import connections

from . import scheduler, sender, steps


@task_prerun.connect
def drop_broken_db_connections(**kwargs: Any) -> None:
    """Workers keep their database connection across tasks (CELERY_DB_REUSE_MAX); one that
    broke (a database restart) is dropped here, so only the task that met the break fails
    (its row is still claimable and the reconciler retries it), not every task after it."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred and not conn.is_usable():
            conn.close()


@shared_task(name="drip.tasks.run_steps")
def run_steps(step_ids: list[int]) -> None:
    steps.run_steps(step_ids)


@shared_task(name="drip.tasks.send_messages")
def send_messages(message_ids: list[int]) -> None:
    sender.send_messages(message_ids)


# The one-id forms: tasks published before batching still run after an upgrade.
@shared_task(name="drip.tasks.run_step")
def run_step(step_id: int) -> None:
    steps.run_steps([step_id])


@shared_task(name="drip.tasks.send_message")
def send_message(message_id: int) -> None:
    sender.send_messages([message_id])


@shared_task(name="drip.tasks.dispatch_due_steps")
def dispatch_due_steps() -> int:
    return scheduler.dispatch_due_steps()


@shared_task(name="drip.tasks.reconcile")
def reconcile() -> dict[str, int]:
    return scheduler.reconcile()


def enqueue_steps(claimed: Iterable[tuple[int, datetime]], batch_size: int | None = None) -> None:
    """One task per batch of steps due at the same instant, with that instant as its ETA:
    steps due at different times never wait for each other."""
    by_due: dict[datetime, list[int]] = defaultdict(list)
    for step_id, due_at in claimed:
        by_due[due_at].append(step_id)
    for due_at, ids in sorted(by_due.items()):
        for batch in chunks(iter(ids), _size(batch_size, settings.DRIP_STEP_BATCH)):
            run_steps.apply_async((batch,), eta=due_at)


def enqueue_sends(message_ids: Sequence[int], eta: datetime | None = None, batch_size: int | None = None) -> None:
    for batch in chunks(iter(message_ids), _size(batch_size, settings.DRIP_SEND_BATCH)):
        send_messages.apply_async((batch,), eta=eta)


def _size(wanted: int | None, most: int) -> int:
    """A caller may ask for smaller batches than the setting allows, never larger."""
    return most if wanted is None else max(1, min(wanted, most))
