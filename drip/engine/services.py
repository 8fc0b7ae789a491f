"""The domain actions, called by every door: the event API and `send_event` (through
drip.doors.intake), the admin, the management commands. Nothing happens behind a `save()`: a
funnel starts, moves or stops only when one of these is called.

Each runs in the caller's transaction (or its own), and hands tasks to Celery only after
commit, so a caller that rolls back leaves nothing running.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from drip.domain.funnels import Trigger, started_by
from drip.engine.completion import (
    CompletionSummary,
    check_completable,
    complete_event,
    replan_for_attendance,
    resolve_attendees,
)
from drip.engine.notices import send_new_time_notices, worth_a_notice
from drip.engine.planning import cancel_steps, plan_enrollment, replan_for_new_start
from drip.models import Contact, Event, Message, Registration, Step
from drip.support.errors import FieldError, shown
from drip.timer.publish import batches, enqueue_sends
from drip.timer.scheduler import CLAIM_BATCH, claim_due_steps

__all__ = [
    "CompletionSummary", "Enrolled", "Rescheduled", "cancel_event", "cancel_registration", "check_completable",
    "complete_event", "enroll", "reschedule", "resolve_attendees", "run_steps_now", "send_failed_again", "set_attendance",
]
log = logging.getLogger("drip.services")
# A message in one of these reached (or may have reached) its provider: never sent again.
REACHED = (Message.Status.SENDING, Message.Status.SENT, Message.Status.DELIVERED, Message.Status.BOUNCED)


@dataclass(frozen=True)
class Enrolled:
    registration: Registration
    state: str  # "created", "matched" or "reactivated"
    steps_planned: int


def enroll(contact: Contact, event: Event, external_id: str | None = None, now: datetime | None = None) -> Enrolled:
    """Register the contact for the event and start the enrollment funnels. The same
    registration again matches it and plans nothing; a cancelled one is reactivated."""
    now = now or timezone.now()
    with transaction.atomic():
        existing = Registration.objects.select_for_update().filter(contact=contact, event=event).first()
        if existing is None:
            fields: dict[str, Any] = {"external_id": external_id} if external_id else {}
            registration = Registration.objects.create(contact=contact, event=event, **fields)
            registration.event = event
            return Enrolled(registration, "created", _open_count(plan_enrollment(registration, now)))
        if existing.status == Registration.Status.ACTIVE:
            return Enrolled(existing, "matched", 0)
        return Enrolled(existing, "reactivated", _reactivate(existing, now))


def _reactivate(registration: Registration, now: datetime) -> int:
    """Active again, planning the enrollment steps that never reached the contact, as new
    plan versions; what was sent is not sent again, and steps now past due are skipped."""
    Registration.objects.filter(pk=registration.pk).update(status=Registration.Status.ACTIVE, cancelled_at=None)
    registration.status, registration.cancelled_at = Registration.Status.ACTIVE, None
    reached = set(
        Message.objects.filter(registration=registration, status__in=REACHED, step__isnull=False)
        .values_list("step__key", flat=True)
    )
    keys = [d.key for f in started_by(Trigger.ENROLLED) for d in f.steps if d.key not in reached]
    return _open_count(plan_enrollment(registration, now, keys=keys))


def _open_count(steps: list[Step]) -> int:
    return sum(1 for s in steps if s.status in Step.OPEN)


@dataclass(frozen=True)
class Rescheduled:
    moved: bool  # False: the event already starts then, and nothing was done
    reminders_moved: int  # open pre-event steps planned for the new start
    notices_queued: int  # "new time" emails (drip.engine.notices)


def reschedule(event: Event, starts_at: datetime, now: datetime | None = None) -> Rescheduled:
    """Move a scheduled event's start, re-plan its start-anchored steps and, for a move of
    more than DRIP_RESCHEDULE_NOTICE_MINUTES, email its registrants the new time. The same
    move again (the event already starts then) does nothing and sends nothing."""
    if event.status != Event.Status.SCHEDULED:
        raise FieldError(f"event {shown(event.external_id)} is {event.status} and can no longer be rescheduled", "eventId")
    with transaction.atomic():
        # Locked, and compared with the stored start: two callers moving the event at once
        # apply one after the other, and the second finds nothing left to do.
        old_start, version = Event.objects.select_for_update().values_list("starts_at", "updated_at").get(pk=event.pk)
        if old_start == starts_at:
            event.starts_at = starts_at
            return Rescheduled(False, 0, 0)
        Event.objects.filter(pk=event.pk).update(starts_at=starts_at, updated_at=timezone.now())
        event.starts_at = starts_at
        moved = _open_count(replan_for_new_start(event, now))
        notices = send_new_time_notices(event, old_start, version.isoformat()) if worth_a_notice(old_start, starts_at, now) else 0
    log.info("event %s rescheduled to %s: %d reminders moved, %d notices queued", event.external_id,
             starts_at.isoformat(), moved, notices)
    return Rescheduled(True, moved, notices)


def cancel_event(event: Event, now: datetime | None = None) -> int:
    """Cancel the event, its open steps and its unsent direct messages. Returns the number
    of steps cancelled; cancelling twice cancels nothing more."""
    if event.status == Event.Status.COMPLETED:
        raise FieldError(
            f"event {shown(event.external_id)} is completed and cannot be cancelled; "
            "send registration.cancelled to stop a registration's follow-ups",
            "eventId",
        )
    with transaction.atomic():
        if not Event.objects.filter(pk=event.pk).exclude(status=Event.Status.CANCELLED).update(
            status=Event.Status.CANCELLED, updated_at=timezone.now()
        ):
            return 0
        event.status = Event.Status.CANCELLED
        cancelled = cancel_steps(Step.objects.filter(registration__event=event), "event cancelled", now)
        Message.objects.filter(registration__event=event, step__isnull=True).withdraw("event cancelled")
    log.info("event %s cancelled: %d steps cancelled", event.external_id, cancelled)
    return cancelled


def cancel_registration(registration: Registration, now: datetime | None = None) -> int:
    """Cancel the registration, all its open steps (pre and post) and its unsent direct
    messages. Returns the number of steps cancelled."""
    now = now or timezone.now()
    with transaction.atomic():
        if not Registration.objects.filter(pk=registration.pk, status=Registration.Status.ACTIVE).update(
            status=Registration.Status.CANCELLED, cancelled_at=now
        ):
            return 0
        registration.status, registration.cancelled_at = Registration.Status.CANCELLED, now
        cancelled = cancel_steps(Step.objects.filter(registration=registration), "registration cancelled", now)
        Message.objects.filter(registration=registration, step__isnull=True).withdraw("registration cancelled")
    return cancelled


def set_attendance(registration: Registration, attended: bool | None) -> list[Step]:
    """Record attendance; after completion, the registration moves to the other branch."""
    with transaction.atomic():
        changed = bool(registration.attended) != bool(attended)
        Registration.objects.filter(pk=registration.pk).update(attended=attended)
        registration.attended = attended
        return replan_for_attendance(registration) if changed else []


# --- the operator's hands on the timer and the sender (the console, simulate) ----------------


def run_steps_now(steps: QuerySet[Step], now: datetime | None = None) -> int:
    """Make every open (pending or enqueued) step of the queryset due now and enqueue it,
    after commit (the console's "run now", simulate's fast-forward). Only the timer moves:
    the step task still checks registration, event, expiry and consent. Returns how many
    were enqueued; steps already running or finished are left as they are."""
    now = now or timezone.now()
    ids = list(steps.order_by().filter(status__in=Step.OPEN).values_list("id", flat=True))
    enqueued = 0
    with transaction.atomic():
        for batch in batches(ids, CLAIM_BATCH):
            Step.objects.filter(id__in=batch).due_now(now)
            enqueued += len(claim_due_steps(now, ids=batch))
    if ids:
        log.info("run now: %d of %d selected steps enqueued, due %s", enqueued, len(ids), now.isoformat())
    return enqueued


def send_failed_again(messages: QuerySet[Message]) -> int:
    """An operator's decision, e.g. after checking that an "outcome unknown" send did not
    arrive: failed → queued, with a fresh budget of attempts and lost claims."""
    pairs = list(messages.filter(status=Message.Status.FAILED).values_list("pk", "channel"))
    ids = [pk for pk, _ in pairs]
    with transaction.atomic():
        Message.objects.filter(pk__in=ids).requeue_failed(timezone.now())
        transaction.on_commit(lambda: enqueue_sends(pairs))
    return len(ids)
