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
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from celery_app import ALL_QUEUES, SEND_QUEUES, STEPS
from drip.models import Message, Step, StepQuerySet
from drip.timer.publish import (
    batches,
    broker_was_reset,
    enqueue_sends,
    enqueue_steps,
    enqueue_verifications,
    enqueue_when_due,
    waiting_tasks,
)

log = logging.getLogger("drip.scheduler")
CLAIM_BATCH = 1000


def horizon(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.DRIP_ENQUEUE_HORIZON)


def step_horizon(now: datetime) -> datetime:
    """The latest due time of a step handed to Celery now: its task waits in the broker for
    at most the horizon, since it runs DRIP_STEP_LEAD before the step is due."""
    return horizon(now) + timedelta(seconds=settings.DRIP_STEP_LEAD)


def schedule_steps(steps: list[Step]) -> list[Step]:
    """Insert planned steps in bulk and enqueue those due soon (after commit)."""
    created = Step.objects.bulk_create(steps, batch_size=CLAIM_BATCH)
    now = timezone.now()
    soon = [s.pk for s in created if s.status == Step.Status.PENDING and s.due_at <= step_horizon(now)]
    claim_soon(soon, now)
    return created


def claim_soon(ids: list[int], now: datetime) -> int:
    """Claim the given steps that are already inside the horizon, a batch at a time."""
    return sum(len(claim_due_steps(now, ids=batch)) for batch in batches(ids, CLAIM_BATCH))


def claim_due_steps(now: datetime | None = None, ids: Iterable[int] | None = None) -> list[tuple[int, datetime]]:
    """Claim up to CLAIM_BATCH pending steps inside the horizon and enqueue them on commit.

    SKIP LOCKED keeps concurrent dispatchers off each other's rows on PostgreSQL; the
    conditional update plus the token makes the claim exact on any database.
    """
    now = now or timezone.now()
    token = uuid.uuid4().hex
    with transaction.atomic():
        pending = Step.objects.filter(status=Step.Status.PENDING, due_at__lte=step_horizon(now))
        if ids is not None:
            pending = pending.filter(id__in=list(ids))
        candidates = list(
            pending.order_by("due_at").select_for_update(skip_locked=True).values_list("id", flat=True)[:CLAIM_BATCH]
        )
        if not candidates:
            return []
        Step.objects.filter(id__in=candidates).claim_for_enqueue(token, now)
        claimed = list(Step.objects.filter(id__in=candidates).claimed_by(token).values_list("id", "due_at"))
        transaction.on_commit(lambda: enqueue_steps(claimed))
    return claimed


def dispatch_due_steps() -> int:
    total = wake_held_messages()
    while True:
        claimed = claim_due_steps()
        total += len(claimed)
        if len(claimed) < CLAIM_BATCH:
            return total


def wake_held_messages(now: datetime | None = None) -> int:
    """Messages held in the database past the horizon (quiet hours) that now come within
    it go to Celery with their time as the ETA; the token makes each wake exactly once."""
    now = now or timezone.now()
    token = uuid.uuid4().hex
    with transaction.atomic():
        if not Message.objects.wake_held(token, horizon(now)):
            return 0
        woken = list(
            Message.objects.filter(claim_token=token, status=Message.Status.QUEUED).values_list("id", "channel", "next_attempt_at")
        )
        for message_id, channel, at in woken:
            transaction.on_commit(partial(enqueue_sends, [(message_id, channel)], eta=at))
    return len(woken)


# pg_try_advisory_xact_lock key of the reconciler ("drip" and 1).
RECONCILE_LOCK = 0x6472697001


def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Re-enqueue work whose enqueue was lost. Every change it makes is conditional, so it is
    safe at any time; with several beats, one run at a time does it (a transaction-scoped
    advisory lock on PostgreSQL, which a transaction-mode PgBouncer keeps; the others skip),
    so two runs never publish the same recovery twice. What it publishes leaves after the
    whole run commits."""
    with transaction.atomic():
        if not _try_advisory_xact_lock(RECONCILE_LOCK):
            log.info("reconcile skipped: another run holds the lock")
            return {"steps_reenqueued": 0, "messages_reenqueued": 0, "messages_to_verify": 0, "verifications_reenqueued": 0,
                    "skipped": 1}
        return _reconcile(now or timezone.now())


def _try_advisory_xact_lock(key: int) -> bool:
    """Held until the surrounding transaction ends; SQLite (one machine, writes serialised
    anyway) has no such lock and always gets it."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
        return bool(cursor.fetchone()[0])


def _reconcile(now: datetime) -> dict[str, int]:
    # After a broker reset everything enqueued is lost; otherwise only what is overdue by
    # more than the grace (a busy worker may still be about to run the rest).
    everything = broker_was_reset()
    stale = now - timedelta(seconds=settings.DRIP_RECONCILE_GRACE)
    busy = set() if everything else _busy_queues()
    counts = {
        "steps_reenqueued": _reenqueue_lost_steps(now, stale, everything, STEPS in busy),
        "messages_reenqueued": _reenqueue_lost_messages(now, stale, everything, busy),
        "messages_to_verify": _verify_interrupted_sends(now),
        "verifications_reenqueued": _reenqueue_lost_verifications(now, stale, everything),
    }
    if any(counts.values()):
        log.warning("reconcile recovered lost work: %s", counts)
    return counts


def _busy_queues() -> set[str]:
    """Queues with tasks no worker has received yet. A step or message enqueued more than the
    grace ago may simply wait in one of them behind a backlog: publishing it again there
    would double the backlog at every run, so a busy queue's lost enqueues wait until it
    drains. A lost worker's
    work does not wait: failover takes it back, and the reconciler's "running"/"stuck" paths
    do not look at queues."""
    try:
        waiting = waiting_tasks(ALL_QUEUES)
    except Exception:  # the broker does not answer: recover as if nothing waited
        log.warning("reconcile could not read the queues' depth", exc_info=True)
        return set()
    busy = {name for name, count in waiting.items() if count}
    if busy:
        log.info("reconcile: tasks waiting in %s; their lost enqueues wait until they drain",
                 ", ".join(f"{name} ({waiting[name]})" for name in sorted(busy)))
    return busy


def in_batches(lost: QuerySet, fields: tuple[str, ...]) -> Iterator[list[tuple]]:
    """Every row of `lost`, CLAIM_BATCH at a time, by id: a run recovers all of it (after a
    broker reset that can be far more than one batch), and rows it has just re-armed, which
    may still match, are not visited twice."""
    after = 0
    while True:
        rows = list(lost.filter(id__gt=after).order_by("id").values_list("id", *fields)[:CLAIM_BATCH])
        if rows:
            yield rows
        if len(rows) < CLAIM_BATCH:
            return
        after = rows[-1][0]


def _reenqueue_lost_steps(now: datetime, stale: datetime, everything: bool, busy: bool = False) -> int:
    # An enqueued step past its due time by more than the grace never ran: its task was
    # lost. A running step older than the grace died with its worker (a step run takes
    # milliseconds, and its outcome commits atomically with "done", so re-running is safe).
    lost_running = Q(status=Step.Status.RUNNING, started_at__lt=stale)
    # A step whose task keeps dying (a bug, not a lost worker) stops here instead of
    # coming back every grace period forever.
    Step.objects.filter(lost_running).fail_repeated_crashes(now)
    lost_enqueued = Q(status=Step.Status.ENQUEUED)
    if not everything:
        lost_enqueued &= Q(due_at__lt=stale, enqueued_at__lt=stale)
    # A batch that died mid-run may have died of one of its steps: those run alone from
    # now on, so one bad step cannot take the others down with it again.
    # The enqueued first: the running ones re-armed below are enqueued too, and would be
    # published twice if this came after them.
    rearmed = 0 if busy else rearm_steps(Step.objects.filter(lost_enqueued), now)
    return rearmed + rearm_steps(Step.objects.filter(lost_running), now, alone=True)


def rearm_steps(lost: StepQuerySet, now: datetime, alone: bool = False) -> int:
    total = 0
    for rows in in_batches(lost, ()):
        token = uuid.uuid4().hex
        ids = [row[0] for row in rows]
        with transaction.atomic():
            # Re-checked by the update itself: a step that started meanwhile is left alone.
            lost.filter(id__in=ids).rearm(token, now)
            claimed = list(Step.objects.filter(id__in=ids).claimed_by(token).values_list("id", "due_at"))
            transaction.on_commit(partial(enqueue_steps, claimed, batch_size=1 if alone else None))
        total += len(claimed)
    return total


def _reenqueue_lost_messages(now: datetime, stale: datetime, everything: bool, busy: set[str] | None = None) -> int:
    # A held message far from its time is not lost: it waits in the database on purpose.
    queued = Message.objects.filter(status=Message.Status.QUEUED).exclude(held_until__isnull=False, next_attempt_at__gt=horizon(now))
    if not everything:
        queued = queued.filter(next_attempt_at__lt=stale)
        # Its task may wait in its channel's queue behind a backlog (_busy_queues).
        queued = queued.exclude(channel__in=[channel for channel, name in SEND_QUEUES.items() if name in (busy or set())])
    # A send stuck before its provider call (sending_at unset) never left: send it again.
    stuck = Message.objects.stuck_before_call(stale)
    # One whose send task keeps dying before the provider call (a bug) stops here.
    stuck.fail_repeated_crashes(now)
    lost = queued | stuck
    total = 0
    for rows in in_batches(lost, ("channel", "next_attempt_at")):
        ids = [mid for mid, _, _ in rows]
        with transaction.atomic():
            Message.objects.filter(id__in=ids).recover_lost_claims(stale, now)
            # One waiting out a retry backoff keeps its time (the sender won't claim it
            # early). Duplicate tasks are harmless: the claim decides.
            Message.objects.filter(id__in=ids).overdue_now(now)
            enqueue_when_due(enqueue_sends, rows, now)
        total += len(rows)
    return total


WORKER_LOST = "worker lost during the provider call"


def _verify_interrupted_sends(now: datetime) -> int:
    # The worker died during the provider call: the provider may or may not have accepted
    # the message. Sending again could deliver it twice and failing it could lose it, so the
    # provider is asked (drip/delivery/verify.py, a task: a lookup is a network call, never made
    # inside this transaction).
    cutoff = now - timedelta(seconds=settings.DRIP_SENDING_TIMEOUT)
    at = now + timedelta(seconds=settings.DRIP_VERIFY_DELAY)
    total = 0
    for rows in in_batches(Message.objects.interrupted_in_call(cutoff), ("channel",)):
        ids = [mid for mid, _ in rows]
        with transaction.atomic():
            total += Message.objects.filter(id__in=ids).interrupted_in_call(cutoff).verify_later(at, WORKER_LOST, now)
            # A row that settled meanwhile gets a task that finds nothing to do.
            transaction.on_commit(partial(enqueue_verifications, rows, eta=at))
    return total


def _reenqueue_lost_verifications(now: datetime, stale: datetime, everything: bool) -> int:
    """Verifying messages whose lookup task was lost (a lookup past due by the grace, or
    everything after a broker reset) get a new one; the task's claim decides."""
    lost = Message.objects.verifying()
    if not everything:
        lost = lost.filter(verify_at__lt=stale)
    total = 0
    for rows in in_batches(lost, ("channel", "verify_at")):
        ids = [mid for mid, _, _ in rows]
        with transaction.atomic():
            Message.objects.filter(id__in=ids).verify_overdue_now(now)
            enqueue_when_due(enqueue_verifications, rows, now)
        total += len(rows)
    return total
