"""Turning funnel tables into Step rows: plan, re-plan, cancel. Funnels come from the
registry (drip.domain.funnels); which ones apply follows from their trigger and anchor."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max
from django.utils import timezone

from drip.domain.funnels import Anchor, Funnel, FunnelStep, Trigger, registered, scaled, started_by
from drip.models import Event, Message, Registration, Step, StepQuerySet
from drip.timer.publish import batches
from drip.timer.scheduler import schedule_steps

log = logging.getLogger("drip.planning")


def build_step(
    funnel: Funnel, definition: FunnelStep, registration_id: int, anchor: datetime, now: datetime, version: int = 1
) -> Step:
    due = now if definition.offset is None else anchor + scaled(definition.offset)
    first = funnel.is_first(definition)
    if first and due < now:
        due = now  # the first step of a funnel goes out at once, however late
    step = Step(
        registration_id=registration_id, funnel=funnel.name, key=definition.key, plan_version=version,
        anchor_at=anchor, due_at=due, expires_at=anchor if funnel.expires_at_anchor else None,
    )
    if due < now:
        step.status = Step.Status.SKIPPED
        step.reason = f"due at {due.isoformat()}, already past when planned at {now.isoformat()}"
        step.finished_at = now
    return step


def start_anchored() -> tuple[Funnel, ...]:
    """The funnels counted from the event's start: a reschedule moves them."""
    return tuple(f for f in registered() if f.anchor is Anchor.START)


def plan_enrollment(registration: Registration, now: datetime | None = None, keys: Iterable[str] | None = None) -> list[Step]:
    """Plan the funnels an enrollment starts (the pre-event funnel). `keys` limits the plan
    to those steps (a re-enrollment plans only what it has not been sent), each as the next
    plan version of its key."""
    now = now or timezone.now()
    steps = enrollment_steps(registration, now, keys)
    created: list[Step] = []
    if steps:
        with transaction.atomic():
            created = schedule_steps(steps)
    _log_plan(created)
    return created


def enrollment_steps(registration: Registration, now: datetime, keys: Iterable[str] | None = None) -> list[Step]:
    """The unsaved steps `plan_enrollment` plans (the rules in one place: drip.engine.bulk builds a
    whole list's registrations with it, then schedules them in one go)."""
    event = registration.event
    steps: list[Step] = []
    for funnel in started_by(Trigger.ENROLLED):
        anchor = funnel.anchor_of(event)
        if registration.status != Registration.Status.ACTIVE or event.status != funnel.requires or anchor is None:
            continue
        if funnel.anchor is Anchor.START and anchor <= now:
            log.info("late enrollment: event already started, no %s step planned [registration=%s]", funnel.name, registration.pk)
            continue
        wanted = [d for d in funnel.steps_for(funnel.branch_for(registration)) if keys is None or d.key in keys]
        versions = _latest_versions([registration.pk]) if keys is not None else {}
        steps += [
            build_step(funnel, d, registration.pk, anchor, now, versions.get((registration.pk, d.key), 0) + 1)
            for d in wanted
        ]
    return steps


def replan_for_new_start(event: Event, now: datetime | None = None) -> list[Step]:
    """The event moved: every step of a start-anchored funnel that has not yet reached a
    recipient is cancelled and planned again, as a new plan version, for the new start.

    That is the open steps, a step running right now (its run finishes only steps it still
    holds, locked, as "running", so it leaves this one alone), a step done for the old start
    whose messages are all still queued (they are skipped here), and a step skipped for the
    old start (past due when planned, say): a later start may leave time for it. What was
    sent stays sent."""
    now = now or timezone.now()
    created: list[Step] = []
    for funnel in start_anchored():
        created += _replan(funnel, event, now)
    return created


def _replan(funnel: Funnel, event: Event, now: datetime) -> list[Step]:
    reason = f"event rescheduled to {event.starts_at.isoformat()}: re-planned"
    with transaction.atomic():
        # Lock only the step rows: locking the joined registrations too would take locks in
        # the opposite order to a concurrent registration cancel, and could deadlock.
        of_event = Step.objects.filter(registration__event=event, funnel=funnel.name)
        unfinished = list(
            of_event.select_for_update(of=("self",))
            .filter(status__in=[*Step.OPEN, Step.Status.RUNNING])
            .values_list("id", "registration_id", "key")
        )
        Step.objects.filter(id__in=[s[0] for s in unfinished]).cancel_unfinished(reason, now)
        undelivered = _done_but_undelivered(funnel, event, reason)
        to_replan = unfinished + undelivered + _skipped_for_an_old_start(funnel, event)
        if not to_replan:
            return []
        if event.starts_at <= now or event.status != funnel.requires:
            log.info("event %s rescheduled into the past: %d steps cancelled", event.pk, len(to_replan))
            return []
        versions = _latest_versions(s[1] for s in to_replan)
        steps = [
            build_step(funnel, funnel.step(key), reg_id, event.starts_at, now, versions[(reg_id, key)] + 1)
            for _, reg_id, key in to_replan
        ]
        created = schedule_steps(steps)
    log.info("event %s rescheduled to %s: %d steps re-planned", event.pk, event.starts_at.isoformat(), len(created))
    return created


def _done_but_undelivered(funnel: Funnel, event: Event, reason: str) -> list[tuple[int, int, str]]:
    """Steps done for an old start with messages that have not reached a provider: those
    messages are withdrawn (they name the old time), and the steps none of whose messages
    reached anyone are planned again. The welcome is not tied to the start (it renders the
    current one), so it is left to go out."""
    rows = list(
        Step.objects.filter(registration__event=event, funnel=funnel.name, status=Step.Status.DONE, key__in=funnel.timed_keys)
        .exclude(anchor_at=event.starts_at)
        .filter(id__in=Message.objects.unsent().values("step_id"))
        .values_list("id", "registration_id", "key")
    )
    steps = [r[0] for r in rows]
    Message.objects.filter(step_id__in=steps).withdraw(reason)
    # What reached a provider (before, or meanwhile) stays sent, and its step is not repeated.
    delivered = set(
        Message.objects.filter(step_id__in=steps).exclude(status=Message.Status.SKIPPED).values_list("step_id", flat=True)
    )
    return [r for r in rows if r[0] not in delivered]


def _skipped_for_an_old_start(funnel: Funnel, event: Event) -> list[tuple[int, int, str]]:
    """The latest plan of a timed step, skipped for an old start without reaching anyone
    (it was past due when planned, or expired): planned again, it is skipped again if the
    new start leaves no time for it either."""
    rows = list(
        Step.objects.filter(
            registration__event=event, registration__status=Registration.Status.ACTIVE, funnel=funnel.name,
            status=Step.Status.SKIPPED, key__in=funnel.timed_keys,
        )
        .exclude(anchor_at=event.starts_at)
        .annotate(sent=Count("messages"))
        .filter(sent=0)
        .values_list("id", "registration_id", "key", "plan_version")
    )
    latest = _latest_versions(r[1] for r in rows)
    return [(step_id, reg_id, key) for step_id, reg_id, key, version in rows if version == latest[(reg_id, key)]]


def _latest_versions(registration_ids: Iterable[int]) -> dict[tuple[int, str], int]:
    rows = (
        Step.objects.filter(registration_id__in=set(registration_ids))
        .values("registration_id", "key")
        .annotate(latest=Max("plan_version"))
    )
    return {(r["registration_id"], r["key"]): r["latest"] for r in rows}


def cancel_steps(steps: StepQuerySet, reason: str, now: datetime | None = None) -> int:
    """Cancel every open step of the queryset (running ones re-validate anyway), and
    withdraw their messages that have not reached the provider yet. A step prepared ahead
    of its due time (DRIP_STEP_LEAD) none of whose messages reached a provider is
    cancelled too: to its reader it had not happened yet."""
    now = now or timezone.now()
    # The ids first (by registration only: each update checks the status), then updates by
    # primary key: linear whatever the table statistics say (a join filtered on status was
    # planned as a scan per registration on tables autovacuum had not analysed yet).
    ids = list(steps.order_by().values_list("id", flat=True))
    cancelled = 0
    for batch in batches(ids, CANCEL_BATCH):
        Message.objects.filter(step_id__in=batch).withdraw(reason)
        reached = Message.objects.filter(step_id__in=batch).exclude(status=Message.Status.SKIPPED).values("step_id")
        mine = Step.objects.filter(id__in=batch)
        prepared = mine.filter(status=Step.Status.DONE, due_at__gt=now).exclude(id__in=reached)
        cancelled += mine.cancel_open(reason, now) + prepared.cancel_prepared(reason, now)
    return cancelled


# Step ids per statement: within SQLite's 999 parameters, few statements for a large event.
CANCEL_BATCH = 900


def _log_plan(steps: list[Step]) -> None:
    for step in steps:
        extra = f" ({step.reason})" if step.reason else ""
        log.info(
            "planned %s/%s due %s: %s%s [registration=%s step=%s]",
            step.funnel, step.key, step.due_at.isoformat(), step.status, extra, step.registration_id, step.pk,
        )


def step_insert_select(template: Step, now: datetime) -> tuple[str, list[Any]]:
    """`INSERT INTO step (...) SELECT ... FROM registration r ` writing `template` once per
    selected registration (the caller adds the WHERE), and its parameters. Bulk planning
    (a completion's fan-out, a list of enrollments) lets the database build the rows, which
    differ only in registration_id; the template comes from build_step, so the rules live
    in one place."""
    columns, values, params = [], [], []
    for column in Step._meta.concrete_fields:
        if column.primary_key:
            continue
        columns.append(connection.ops.quote_name(str(column.column)))
        if column.attname == "registration_id":
            values.append("r.id")
            continue
        value = now if column.attname == "created_at" else getattr(template, column.attname)
        values.append("%s")
        params.append(column.get_db_prep_save(value, connection))
    sql = (
        f"INSERT INTO {connection.ops.quote_name(Step._meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {connection.ops.quote_name(Registration._meta.db_table)} r "
    )
    return sql, params
