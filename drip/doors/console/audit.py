"""The console's audit trail: every action and custom view that changes data writes Django
admin-log entries (user, time, what, how many rows), shown on each object's history page
and, for superusers, in the admin log's own list (drip/admin/audit.py)."""
from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.db.models import Model
from django.http import HttpRequest


def record(request: HttpRequest, objects: Iterable[Model], message: str, flag: int = CHANGE) -> int:
    """One admin-log entry per object the operator acted on (shown in its history), saying
    what was done and how many rows it touched. Returns how many entries were written."""
    rows = list(objects)
    assert request.user.pk is not None  # the console's views are for logged-in staff only
    if rows:
        LogEntry.objects.log_actions(request.user.pk, rows, flag, change_message=message)
    return len(rows)


def record_addition(request: HttpRequest, obj: Model, message: str) -> None:
    record(request, [obj], message, ADDITION)
