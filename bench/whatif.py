"""What-ifs: the changes bench/README.md recommends, measured here without touching project
code, so a recommendation comes with a number. Nothing in the project imports this.

- set_based_complete_event: complete_event with the per-registration Python loop replaced
  by one INSERT ... SELECT per funnel step definition (six statements for any event size).
- DB connection reuse in the worker: bench/celery_bench.py sets CELERY_DB_REUSE_MAX when
  BENCH_WHATIF_DB_REUSE_MAX is in its environment (see measure in bench/run.py).
"""
from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from campaigns.funnels import ATTENDED, POST_EVENT, PRE_EVENT
from campaigns.planning import build_step, cancel_open_steps
from drip.models import Event, Registration, Step


def set_based_complete_event(event: Event, attended: set[int], completed_at: datetime) -> int:
    """The same rows complete_event writes, planned in the database: every registration of a
    branch gets the same due time, so the rows differ only in registration_id, and one
    INSERT ... SELECT over the registrations writes them. Returns the steps inserted.

    A prototype: it leaves steps already inside the enqueue horizon to the dispatcher's next
    tick instead of claiming them itself, and assumes the event was not completed before."""
    now = timezone.now()
    inserted = 0
    with transaction.atomic():
        if attended:
            Registration.objects.filter(pk__in=attended).update(attended=True)
        Event.objects.filter(pk=event.pk).update(status=Event.Status.COMPLETED, completed_at=completed_at)
        cancel_open_steps(Step.objects.filter(registration__event=event, funnel=PRE_EVENT.name), "event completed", now)
        for definition in POST_EVENT.steps:
            inserted += _insert_for_branch(event, definition, completed_at, now)
    return inserted


def _insert_for_branch(event: Event, definition, completed_at: datetime, now: datetime) -> int:
    # A template row from the project's own build_step: same due time, status and reason.
    template = build_step(POST_EVENT, definition, 0, completed_at, now)
    fields = [f for f in Step._meta.concrete_fields if not f.primary_key]
    columns, values, params = [], [], []
    for field in fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.attname == "registration_id":
            values.append("r.id")
            continue
        if getattr(field, "auto_now_add", False) or getattr(field, "auto_now", False):
            value = now
        else:
            value = getattr(template, field.attname)
        values.append("%s")
        params.append(field.get_db_prep_save(value, connection))
    attended_test = "r.attended IS TRUE" if definition.branch == ATTENDED else "r.attended IS NOT TRUE"
    sql = (
        f"INSERT INTO {Step._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} FROM {Registration._meta.db_table} r "
        f"WHERE r.event_id = %s AND r.status = %s AND {attended_test}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, event.pk, Registration.Status.ACTIVE])
        return cursor.rowcount
