"""The one place that publishes tasks. Every stage that hands work on (the scheduler, the
step runner, the sender, the services) imports this module at the top; it publishes by task
name, so it knows no task definition and nothing imports back up from it.

Work travels in batches: a step task takes the steps due at one instant (every
registration's reminder of an event), a send task a list of messages. A batch costs one
claim, one load and one consent read instead of one of each per row, and one task instead of
one per row: that is what lets a worker keep up with a large event (bench/README.md).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from celery.utils.functional import chunks
from django.conf import settings

from celery_app import app

RUN_STEPS = "drip.tasks.run_steps"
SEND_MESSAGES = "drip.tasks.send_messages"


def enqueue_steps(claimed: Iterable[tuple[int, datetime]], batch_size: int | None = None) -> None:
    """One task per batch of steps due at the same instant, with that instant as its ETA:
    steps due at different times never wait for each other."""
    by_due: dict[datetime, list[int]] = defaultdict(list)
    for step_id, due_at in claimed:
        by_due[due_at].append(step_id)
    for due_at, ids in sorted(by_due.items()):
        for batch in batches(ids, _size(batch_size, settings.DRIP_STEP_BATCH)):
            app.send_task(RUN_STEPS, (batch,), eta=due_at)


def enqueue_sends(message_ids: Sequence[int], eta: datetime | None = None, batch_size: int | None = None) -> None:
    for batch in batches(message_ids, _size(batch_size, settings.DRIP_SEND_BATCH)):
        app.send_task(SEND_MESSAGES, (batch,), eta=eta)


def batches(items: Iterable[int], size: int) -> Iterable[list[int]]:
    """Celery's own `chunks`, for every loop that cuts ids into statements or tasks."""
    return chunks(iter(items), size)


def _size(wanted: int | None, most: int) -> int:
    """A caller may ask for smaller batches than the setting allows, never larger."""
    return most if wanted is None else max(1, min(wanted, most))
