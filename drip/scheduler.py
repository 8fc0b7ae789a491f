"""The durable timer. Step rows are the timers; Celery only ever holds the next few minutes.

- A step due within DRIP_ENQUEUE_HORIZON is claimed (pending → enqueued, a conditional
  update) and handed to Celery with eta=due_at, after the transaction commits.
- `dispatch_due_steps` (beat, every few seconds) claims the steps that enter the horizon.
- `reconcile` (beat) finds work whose enqueue was lost (Redis flushed or restarted, a
  worker killed) and enqueues it again. Every task claims its row before acting, so a task
  delivered twice does nothing the second time.

Why not one ETA task per step: a Redis-backed Celery worker keeps ETA tasks unacknowledged
in memory, Redis redelivers them after visibility_timeout (1 h), and a flush loses them.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Message, Step

log = logging.getLogger("drip.scheduler")
CLAIM_BATCH = 1000
STEP_MAX_ATTEMPTS = 5


def horizon(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.DRIP_ENQUEUE_HORIZON)


def schedule_steps(steps: list[Step]) -> list[Step]:
    """Insert planned steps in bulk and enqueue those due soon (after commit)."""
    created = Step.objects.bulk_create(steps, batch_size=CLAIM_BATCH)
    now = timezone.now()
    soon = [s.pk for s in created if s.status == Step.Status.PENDING and s.due_at <= horizon(now)]
    for start in range(0, len(soon), CLAIM_BATCH):
        claim_due_steps(now, ids=soon[start : start + CLAIM_BATCH])
    return created


def claim_due_steps(now: datetime | None = None, ids: Iterable[int] | None = None) -> list[tuple[int, datetime]]:
    """Claim up to CLAIM_BATCH pending steps inside the horizon and enqueue them on commit.

    SKIP LOCKED keeps concurrent dispatchers off each other's rows on PostgreSQL; the
    conditional update plus the token makes the claim exact on any database.
    """
    now = now or timezone.now()
    token = uuid.uuid4().hex
    with transaction.atomic():
        pending = Step.objects.filter(status=Step.Status.PENDING, due_at__lte=horizon(now))
        if ids is not None:
            pending = pending.filter(id__in=list(ids))
        candidates = list(
            pending.order_by("due_at").select_for_update(skip_locked=True).values_list("id", flat=True)[:CLAIM_BATCH]
        )
        if not candidates:
            return []
        Step.objects.filter(id__in=candidates, status=Step.Status.PENDING).update(
            status=Step.Status.ENQUEUED, enqueued_at=now, dispatch_token=token
        )
        claimed = list(Step.objects.filter(id__in=candidates, dispatch_token=token).values_list("id", "due_at"))
        transaction.on_commit(lambda: enqueue_step_tasks(claimed))
    return claimed


def enqueue_step_tasks(claimed: list[tuple[int, datetime]]) -> None:
    from .tasks import run_step

    for step_id, due_at in claimed:
        run_step.apply_async((step_id,), eta=due_at)


def dispatch_due_steps() -> int:
    total = 0
    while True:
        claimed = claim_due_steps()
        total += len(claimed)
        if len(claimed) < CLAIM_BATCH:
            return total


BROKER_MARK = "drip:broker-mark"


def broker_was_reset() -> bool:
    """True when the broker lost its data since the last check (flushed, or restarted
    without persistence): the mark we leave there is gone. Then every enqueued task is
    lost and the reconciler re-enqueues them all at once, without waiting for due times."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return False
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return bool(client.set(BROKER_MARK, timezone.now().isoformat(), nx=True))
    finally:
        client.close()


def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Re-enqueue work whose enqueue was lost. Safe to run at any time, any number of times."""
    now = now or timezone.now()
    # After a broker reset everything enqueued is lost; otherwise only what is overdue by
    # more than the grace (a busy worker may still be about to run the rest).
    everything = broker_was_reset()
    stale = now - timedelta(seconds=settings.DRIP_RECONCILE_GRACE)
    counts = {
        "steps_reenqueued": _reenqueue_lost_steps(now, stale, everything),
        "messages_reenqueued": _reenqueue_lost_messages(now, stale, everything),
        "messages_unknown": _fail_interrupted_sends(now),
    }
    if any(counts.values()):
        log.warning("reconcile recovered lost work: %s", counts)
    return counts


def _reenqueue_lost_steps(now: datetime, stale: datetime, everything: bool) -> int:
    # An enqueued step past its due time by more than the grace never ran: its task was
    # lost. A running step older than the grace died with its worker (a step run takes
    # milliseconds, and its outcome commits atomically with "done", so re-running is safe).
    token = uuid.uuid4().hex
    lost_enqueued = Step.objects.filter(status=Step.Status.ENQUEUED)
    if not everything:
        lost_enqueued = lost_enqueued.filter(due_at__lt=stale, enqueued_at__lt=stale)
    lost_running = Step.objects.filter(status=Step.Status.RUNNING, started_at__lt=stale)
    # A step whose task keeps dying (a bug, not a lost worker) stops here instead of
    # coming back every grace period forever.
    lost_running.filter(attempts__gte=STEP_MAX_ATTEMPTS).update(
        status=Step.Status.FAILED, finished_at=now,
        reason=f"step task did not finish in {STEP_MAX_ATTEMPTS} attempts; see the worker log",
    )
    with transaction.atomic():
        enqueued_ids = list(lost_enqueued.values_list("id", flat=True)[:CLAIM_BATCH])
        running_ids = list(lost_running.values_list("id", flat=True)[:CLAIM_BATCH])
        Step.objects.filter(id__in=enqueued_ids, status=Step.Status.ENQUEUED).update(enqueued_at=now, dispatch_token=token)
        Step.objects.filter(id__in=running_ids, status=Step.Status.RUNNING).update(
            status=Step.Status.ENQUEUED, enqueued_at=now, dispatch_token=token
        )
        claimed = list(
            Step.objects.filter(id__in=enqueued_ids + running_ids, dispatch_token=token).values_list("id", "due_at")
        )
        if claimed:
            transaction.on_commit(lambda: enqueue_step_tasks(claimed))
    return len(claimed)


def _reenqueue_lost_messages(now: datetime, stale: datetime, everything: bool) -> int:
    from .tasks import send_message

    queued = Message.objects.filter(status=Message.Status.QUEUED)
    if not everything:
        queued = queued.filter(next_attempt_at__lt=stale)
    # A send stuck before its provider call (sending_at unset) never left: send it again.
    stuck = Message.objects.filter(status=Message.Status.SENDING, sending_at__isnull=True, updated_at__lt=stale)
    with transaction.atomic():
        lost = dict(queued.values_list("id", "next_attempt_at")[:CLAIM_BATCH])
        stuck_ids = list(stuck.values_list("id", flat=True)[:CLAIM_BATCH])
        Message.objects.filter(id__in=stuck_ids, status=Message.Status.SENDING, sending_at__isnull=True).update(
            status=Message.Status.QUEUED, next_attempt_at=now, updated_at=now
        )
        lost.update((mid, now) for mid in stuck_ids)
        # Overdue ones get a fresh next_attempt_at so the next run does not pick them again;
        # one waiting out a retry backoff keeps its time (send_message won't claim it early).
        Message.objects.filter(id__in=[mid for mid, at in lost.items() if at < now]).update(next_attempt_at=now, updated_at=now)
        transaction.on_commit(lambda: [send_message.apply_async((mid,), eta=max(at, now)) for mid, at in lost.items()])
    return len(lost)


def _fail_interrupted_sends(now: datetime) -> int:
    # The worker died during the provider call: the provider may or may not have accepted
    # the message. Sending again could deliver it twice, so it is failed with the reason and
    # left for an operator (the admin can re-queue it).
    cutoff = now - timedelta(seconds=settings.DRIP_SENDING_TIMEOUT)
    return Message.objects.filter(status=Message.Status.SENDING, sending_at__lt=cutoff).update(
        status=Message.Status.FAILED,
        error="worker lost during the provider call: outcome unknown, not resent to avoid a duplicate",
        updated_at=now,
    )
