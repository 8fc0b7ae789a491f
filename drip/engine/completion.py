"""Completing an event: attendance in, the steps that need a scheduled event out, the funnels
a completion starts planned in bulk (one INSERT per funnel step, no per-registration round
trips), all in one transaction."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Max
from django.db.models.functions import Lower
from django.utils import timezone

from drip.domain.funnels import ATTENDED, NO_SHOW, Funnel, Trigger, registered, started_by
from drip.engine.planning import build_step, cancel_steps, step_insert_select
from drip.models import Event, Registration, Step
from drip.support.errors import FieldError
from drip.timer.publish import batches
from drip.timer.scheduler import claim_soon, schedule_steps, step_horizon

log = logging.getLogger("drip.completion")
BATCH = 5000  # ids per statement: SQLite caps the parameters of one
LINKS = ("recording_url", "slides_url")


@dataclass
class CompletionSummary:
    event_id: str
    completed_at: datetime
    dry_run: bool
    already_completed: bool = False
    branches: dict[str, int] = field(default_factory=lambda: {ATTENDED: 0, NO_SHOW: 0})
    steps_planned: int = 0
    pre_event_cancelled: int = 0
    first_due: datetime | None = None

    def as_dict(self) -> dict:
        return {
            "eventId": self.event_id, "completedAt": self.completed_at.isoformat(), "dryRun": self.dry_run,
            "alreadyCompleted": self.already_completed, "branches": dict(self.branches),
            "stepsPlanned": self.steps_planned, "preEventStepsCancelled": self.pre_event_cancelled,
            "firstDue": self.first_due.isoformat() if self.first_due else None,
        }


def resolve_attendees(event: Event, registration_ids: Iterable[str] = (), emails: Iterable[str] = ()) -> set[int]:
    """Registration primary keys for the given external registration ids or contact emails;
    any that does not belong to this event is an error naming it."""
    wanted_ids = {str(r).strip() for r in registration_ids if str(r).strip()}
    wanted_emails = {e.strip().lower() for e in emails if e.strip()}
    found = dict(Registration.objects.filter(event=event, external_id__in=wanted_ids).values_list("external_id", "pk"))
    unknown = sorted(wanted_ids - found.keys())
    if unknown:
        raise FieldError(f"unknown registration id(s) for event {event.external_id}: {', '.join(unknown[:10])}", "attendedRegistrationIds")
    by_email: dict[str, int] = {}
    if wanted_emails:
        rows = (
            Registration.objects.filter(event=event)
            .annotate(email_lower=Lower("contact__email"))
            .filter(email_lower__in=wanted_emails)
            .values_list("email_lower", "pk")
        )
        by_email = dict(rows)
        missing = sorted(wanted_emails - by_email.keys())
        if missing:
            raise FieldError(f"no registration for event {event.external_id} with email(s): {', '.join(missing[:10])}", "attendedCsv")
    return set(found.values()) | set(by_email.values())


def complete_event(
    event: Event,
    attended: Iterable[int] = (),
    completed_at: datetime | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    links: dict[str, str] | None = None,
) -> CompletionSummary:
    """Mark attendance, complete the event, cancel its open pre-event steps and plan the
    post-event funnel. Completing a completed event changes nothing and says so. A completion
    before the scheduled start is refused unless forced (a one-click mistake would cancel the
    reminders and thank people for an event that has not happened). `links` may carry the
    event's `recording_url` and `slides_url` for the post-event emails."""
    now = timezone.now()
    completed_at = completed_at or now
    summary = CompletionSummary(event.external_id, completed_at, dry_run)
    if event.status == Event.Status.COMPLETED:
        summary.already_completed = True
        summary.completed_at = event.completed_at or completed_at
        return summary
    check_completable(event, completed_at, force)
    with transaction.atomic():
        locked = Event.objects.select_for_update().get(pk=event.pk)
        if locked.status == Event.Status.COMPLETED:  # a concurrent completion won
            summary.already_completed = True
            return summary
        if links:
            Event.objects.filter(pk=event.pk).update(**{k: v for k, v in links.items() if k in LINKS})
        _plan_all(locked, attended, completed_at, now, summary, progress)
        if dry_run:
            transaction.set_rollback(True)
            return summary
    event.refresh_from_db()
    log.info("event %s completed: %s", event.external_id, summary.as_dict())
    return summary


def check_completable(event: Event, completed_at: datetime, force: bool = False) -> None:
    """Raise FieldError when this completion would be refused (before any work: the console
    says so at once rather than from a background job)."""
    if event.status == Event.Status.CANCELLED:
        raise FieldError(f"event {event.external_id} is cancelled and cannot be completed", "eventId")
    if completed_at < event.starts_at and not force:
        raise FieldError(
            f"completedAt {completed_at.isoformat()} is before the event's scheduled start {event.starts_at.isoformat()};"
            " send force: true (--force) if it really ended before it was due to begin",
            "completedAt",
        )


def _plan_all(event: Event, attended: Iterable[int], completed_at: datetime, now: datetime,
              summary: CompletionSummary, progress: Callable[[int, int], None] | None) -> None:
    for batch in batches(sorted(attended), BATCH):
        Registration.objects.filter(pk__in=batch).update(attended=True)
    Event.objects.filter(pk=event.pk).update(status=Event.Status.COMPLETED, completed_at=completed_at)
    # Steps that need a scheduled event (the pre-event reminders) can no longer run.
    before = [f.name for f in registered() if f.requires == Event.Status.SCHEDULED]
    summary.pre_event_cancelled = cancel_steps(
        Step.objects.filter(registration__event=event, funnel__in=before), "event completed", now
    )
    active = Registration.objects.filter(event=event, status=Registration.Status.ACTIVE)
    summary.branches[ATTENDED] = active.filter(attended=True).count()
    summary.branches[NO_SHOW] = active.count() - summary.branches[ATTENDED]
    total = sum(summary.branches.values())
    funnels = started_by(Trigger.COMPLETED)
    planned = [(f, d) for f in funnels for d in f.steps]
    for n, (funnel, definition) in enumerate(planned, 1):
        template = build_step(funnel, definition, 0, completed_at, now)
        inserted = _insert_for_branch(event, template, funnel, definition.branch, now)
        if template.status == Step.Status.PENDING and inserted:
            summary.steps_planned += inserted
            summary.first_due = min(filter(None, (summary.first_due, template.due_at)))
        if progress:
            progress(total * n // len(planned), total)
    _enqueue_due_soon(event, [f.name for f in funnels], now)


def _insert_for_branch(event: Event, template: Step, funnel: Funnel, branch: str, now: datetime) -> int:
    """One INSERT ... SELECT writes this step for every active registration of the branch.

    Every registration of a branch gets the same due time, status and reason, so the rows
    differ only in registration_id: the database builds them, and 100,000 registrations
    cost six statements instead of 300,000 Python objects. The template comes from
    build_step, so the rules live in one place."""
    insert, params = step_insert_select(template, now)
    sql = (
        insert +
        f"WHERE r.event_id = %s AND r.status = %s{_branch_test(funnel, branch)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, event.pk, Registration.Status.ACTIVE])
        return cursor.rowcount


def _branch_test(funnel: Funnel, branch: str) -> str:
    if not funnel.by_attendance:
        return ""
    return " AND r.attended IS TRUE" if branch == ATTENDED else " AND r.attended IS NOT TRUE"  # unknown = no-show


def _enqueue_due_soon(event: Event, funnels: list[str], now: datetime) -> None:
    """Steps already inside the enqueue horizon (a completion entered late, or a large
    DRIP_TIME_SCALE) go to Celery now rather than at the dispatcher's next tick."""
    due_soon = Step.objects.filter(
        registration__event=event, funnel__in=funnels, status=Step.Status.PENDING, due_at__lte=step_horizon(now)
    )
    claim_soon(list(due_soon.values_list("id", flat=True)), now)


def replan_for_attendance(registration: Registration, now: datetime | None = None) -> list[Step]:
    """Attendance changed after completion: the other branch's open steps are cancelled and
    whatever this branch lacks is planned from the same completion time (past-due steps
    skipped). Steps of this branch already done or still open are kept, so flipping twice
    neither repeats a sent message nor loses the rest of the branch."""
    now = now or timezone.now()
    event = Event.objects.get(pk=registration.event_id)  # the cached one may predate completion
    if event.status != Event.Status.COMPLETED or registration.status != Registration.Status.ACTIVE:
        return []
    created: list[Step] = []
    for funnel in started_by(Trigger.COMPLETED):
        if funnel.by_attendance:
            created += _replan_branch(funnel, registration, event, now)
    return created


def _replan_branch(funnel: Funnel, registration: Registration, event: Event, now: datetime) -> list[Step]:
    branch = funnel.branch_for(registration)
    keys = [d.key for d in funnel.steps_for(branch)]
    with transaction.atomic():
        steps = Step.objects.filter(registration=registration, funnel=funnel.name)
        cancel_steps(steps.exclude(key__in=keys), f"attendance changed: now {branch}", now)
        kept = set(steps.filter(key__in=keys).exclude(status=Step.Status.CANCELLED).values_list("key", flat=True))
        missing = [d for d in funnel.steps_for(branch) if d.key not in kept]
        if not missing or event.completed_at is None:
            return []
        version = (steps.aggregate(v=Max("plan_version"))["v"] or 0) + 1
        return schedule_steps([build_step(funnel, d, registration.pk, event.completed_at, now, version) for d in missing])
