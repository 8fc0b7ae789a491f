"""Completing an event: attendance in, pre-event steps out, the post-event funnel planned
in bulk (one INSERT per batch, no per-registration round trips), all in one transaction."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Max
from django.db.models.functions import Lower
from django.utils import timezone

from drip.models import Event, Registration, Step
from drip.scheduler import CLAIM_BATCH, claim_due_steps, horizon, schedule_steps

from .funnels import ATTENDED, NO_SHOW, POST_EVENT, PRE_EVENT
from .planning import build_step, cancel_open_steps

log = logging.getLogger("campaigns.completion")
BATCH = 5000


class CompletionError(ValueError):
    """Bad input for a completion; `field` names the culprit (API: camelCase)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


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
        raise CompletionError(f"unknown registration id(s) for event {event.external_id}: {', '.join(unknown[:10])}", "attendedRegistrationIds")
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
            raise CompletionError(f"no registration for event {event.external_id} with email(s): {', '.join(missing[:10])}", "attendedCsv")
    return set(found.values()) | set(by_email.values())


def complete_event(
    event: Event,
    attended: set[int] = frozenset(),
    completed_at: datetime | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CompletionSummary:
    """Mark attendance, complete the event, cancel its open pre-event steps and plan the
    post-event funnel. Completing a completed event changes nothing and says so."""
    now = timezone.now()
    completed_at = completed_at or now
    summary = CompletionSummary(event.external_id, completed_at, dry_run)
    if event.status == Event.Status.COMPLETED:
        summary.already_completed = True
        summary.completed_at = event.completed_at or completed_at
        return summary
    if event.status == Event.Status.CANCELLED:
        raise CompletionError(f"event {event.external_id} is cancelled and cannot be completed", "eventId")
    with transaction.atomic():
        locked = Event.objects.select_for_update().get(pk=event.pk)
        if locked.status == Event.Status.COMPLETED:  # a concurrent completion won
            summary.already_completed = True
            return summary
        _plan_all(locked, attended, completed_at, now, summary, progress)
        if dry_run:
            transaction.set_rollback(True)
            return summary
    event.refresh_from_db()
    log.info("event %s completed: %s", event.external_id, summary.as_dict())
    return summary


def _plan_all(event: Event, attended: set[int], completed_at: datetime, now: datetime,
              summary: CompletionSummary, progress: Callable[[int, int], None] | None) -> None:
    ids = sorted(attended)
    for start in range(0, len(ids), BATCH):  # SQLite caps the parameters of one statement
        Registration.objects.filter(pk__in=ids[start : start + BATCH]).update(attended=True)
    # Saved through the ORM's update so the Event signals (reschedule/cancel) stay out of it.
    Event.objects.filter(pk=event.pk).update(status=Event.Status.COMPLETED, completed_at=completed_at)
    summary.pre_event_cancelled = cancel_open_steps(
        Step.objects.filter(registration__event=event, funnel=PRE_EVENT.name), "event completed", now
    )
    active = Registration.objects.filter(event=event, status=Registration.Status.ACTIVE)
    summary.branches[ATTENDED] = active.filter(attended=True).count()
    summary.branches[NO_SHOW] = active.count() - summary.branches[ATTENDED]
    total = sum(summary.branches.values())
    for n, definition in enumerate(POST_EVENT.steps, 1):
        template = build_step(POST_EVENT, definition, 0, completed_at, now)
        inserted = _insert_for_branch(event, template, definition.branch, now)
        if template.status == Step.Status.PENDING and inserted:
            summary.steps_planned += inserted
            summary.first_due = min(filter(None, (summary.first_due, template.due_at)))
        if progress:
            progress(total * n // len(POST_EVENT.steps), total)
    _enqueue_due_soon(event, now)


def _insert_for_branch(event: Event, template: Step, branch: str, now: datetime) -> int:
    """One INSERT ... SELECT writes this step for every active registration of the branch.

    Every registration of a branch gets the same due time, status and reason, so the rows
    differ only in registration_id: the database builds them, and 100,000 registrations
    cost six statements instead of 300,000 Python objects. The template comes from
    build_step, so the rules live in one place."""
    columns, values, params = [], [], []
    for field in Step._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(connection.ops.quote_name(field.column))
        if field.attname == "registration_id":
            values.append("r.id")
            continue
        value = now if field.attname == "created_at" else getattr(template, field.attname)
        values.append("%s")
        params.append(field.get_db_prep_save(value, connection))
    attended_test = "r.attended IS TRUE" if branch == ATTENDED else "r.attended IS NOT TRUE"  # unknown = no-show
    sql = (
        f"INSERT INTO {connection.ops.quote_name(Step._meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {connection.ops.quote_name(Registration._meta.db_table)} r "
        f"WHERE r.event_id = %s AND r.status = %s AND {attended_test}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, event.pk, Registration.Status.ACTIVE])
        return cursor.rowcount


def _enqueue_due_soon(event: Event, now: datetime) -> None:
    """Steps already inside the enqueue horizon (a completion entered late, or a large
    DRIP_TIME_SCALE) go to Celery now rather than at the dispatcher's next tick."""
    due_soon = Step.objects.filter(
        registration__event=event, funnel=POST_EVENT.name, status=Step.Status.PENDING, due_at__lte=horizon(now)
    )
    ids = list(due_soon.values_list("id", flat=True))
    for start in range(0, len(ids), CLAIM_BATCH):
        claim_due_steps(now, ids=ids[start : start + CLAIM_BATCH])


def replan_post_event(registration: Registration, now: datetime | None = None) -> list[Step]:
    """Attendance changed after completion: the other branch's open steps are cancelled and
    whatever this branch lacks is planned from the same completion time (past-due steps
    skipped). Steps of this branch already done or still open are kept, so flipping twice
    neither repeats a sent message nor loses the rest of the branch."""
    now = now or timezone.now()
    event = Event.objects.get(pk=registration.event_id)  # the cached one may predate completion
    if event.status != Event.Status.COMPLETED or registration.status != Registration.Status.ACTIVE:
        return []
    branch = POST_EVENT.branch_for(registration)
    keys = [d.key for d in POST_EVENT.steps_for(branch)]
    with transaction.atomic():
        post_steps = Step.objects.filter(registration=registration, funnel=POST_EVENT.name)
        cancel_open_steps(post_steps.exclude(key__in=keys), f"attendance changed: now {branch}", now)
        kept = set(post_steps.filter(key__in=keys).exclude(status=Step.Status.CANCELLED).values_list("key", flat=True))
        missing = [d for d in POST_EVENT.steps_for(branch) if d.key not in kept]
        if not missing:
            return []
        version = (post_steps.aggregate(v=Max("plan_version"))["v"] or 0) + 1
        steps = [build_step(POST_EVENT, d, registration.pk, event.completed_at, now, version) for d in missing]
        return schedule_steps(steps)
