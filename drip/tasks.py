"""Celery tasks. They carry ids only; every one claims its row before acting, so each is
safe to run twice (acks_late + reject_on_worker_lost are set globally in settings)."""
from __future__ import annotations

from celery import shared_task

from . import scheduler, sender, steps


@shared_task(name="drip.tasks.run_step")
def run_step(step_id: int) -> None:
    steps.run_step(step_id)


@shared_task(name="drip.tasks.send_message")
def send_message(message_id: int) -> None:
    sender.send_message(message_id)


@shared_task(name="drip.tasks.dispatch_due_steps")
def dispatch_due_steps() -> int:
    return scheduler.dispatch_due_steps()


@shared_task(name="drip.tasks.reconcile")
def reconcile() -> dict[str, int]:
    return scheduler.reconcile()
