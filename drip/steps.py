"""The step task's work: claim the Step, re-validate, create its Messages, hand them to
send_message. Everything after the claim commits together with status "done"."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .logs import IdsAdapter, step_log
from .models import Message, Step
from .policy import channel_block_reason, step_block

# ETA timers fire a few milliseconds early at worst; anything earlier is a stray delivery.
EARLY_TOLERANCE = timedelta(seconds=1)


def run_step(step_id: int) -> None:
    now = timezone.now()
    # Not yet due: a stray early delivery leaves the step to its own ETA task (or, if that
    # was lost, to the reconciler) instead of stealing the claim.
    claimed = Step.objects.filter(
        id=step_id, status=Step.Status.ENQUEUED, due_at__lte=now + EARLY_TOLERANCE
    ).update(status=Step.Status.RUNNING, started_at=now, attempts=F("attempts") + 1)
    if not claimed:
        _rearm_if_early(step_id, now)
        return  # already run, cancelled, re-planned or not due: a duplicate does nothing
    step = Step.objects.select_related("registration__event", "registration__contact").get(id=step_id)
    log = step_log(step)
    block = step_block(step, now)
    if block:
        Step.objects.filter(id=step_id, status=Step.Status.RUNNING).update(
            status=block.status, reason=block.reason, finished_at=now
        )
        log.info("step %s %s: %s", step.key, block.status, block.reason)
        return
    _create_messages(step, now, log)


def _rearm_if_early(step_id: int, now: datetime) -> None:
    """A task that arrives before its step is due (clocks of hosts apart by more than the
    tolerance) asks again at the due time rather than leaving the step to the reconciler.
    Duplicates this may create are harmless: only one claim can win."""
    from .tasks import run_step as run_step_task

    due = Step.objects.filter(id=step_id, status=Step.Status.ENQUEUED, due_at__gt=now + EARLY_TOLERANCE).values_list("due_at", flat=True).first()
    if due is not None:
        run_step_task.apply_async((step_id,), eta=due)


def _create_messages(step: Step, now: datetime, log: IdsAdapter) -> None:
    from campaigns.funnels import funnel_step

    from .tasks import send_message

    _, definition = funnel_step(step)
    registration = step.registration
    contact = registration.contact
    with transaction.atomic():
        # Conditional, so a reconciler that re-claimed a slow run makes this one roll back.
        if not Step.objects.filter(id=step.id, status=Step.Status.RUNNING).update(status=Step.Status.DONE, finished_at=now):
            return
        messages = []
        for channel in definition.channels:
            reason = channel_block_reason(contact, channel)
            messages.append(
                Message(
                    step=step, contact=contact, registration=registration, channel=channel,
                    template_type=definition.template_type, to=contact.address_for(channel),
                    status=Message.Status.SKIPPED if reason else Message.Status.QUEUED,
                    error=reason, expires_at=step.expires_at, next_attempt_at=now,
                )
            )
        Message.objects.bulk_create(messages)
        # bulk_create returns primary keys on PostgreSQL and SQLite >= 3.35.
        queued = [m.pk for m in messages if m.status == Message.Status.QUEUED]
        transaction.on_commit(lambda: [send_message.delay(mid) for mid in queued])
    for m in messages:
        if m.status == Message.Status.SKIPPED:
            log.info("step %s: %s message skipped: %s", step.key, m.channel, m.error)
    log.info("step %s done at %s (%d queued)", step.key, now.isoformat(), len(queued))
