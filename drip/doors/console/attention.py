"""What the admin index shows first: what needs an operator's attention now."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from drip.doors.console.display import utc_text
from drip.models import Message, Step

DISPATCH_TASK = "drip-dispatch-due-steps"
FAILED = (Message.Status.FAILED, Message.Status.BOUNCED)


def needs_attention(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    since = now - timedelta(hours=24)
    overdue_before = now - timedelta(minutes=1)
    failed = Message.objects.filter(status__in=FAILED, updated_at__gte=since).count()
    overdue = Step.objects.filter(status__in=Step.OPEN, due_at__lt=overdue_before).count()
    unknown = Message.objects.filter(status=Message.Status.FAILED, error_class=Message.ErrorClass.OUTCOME_UNKNOWN).count()
    last_run = PeriodicTask.objects.filter(name=DISPATCH_TASK).values_list("last_run_at", flat=True).first()
    messages_url = reverse("admin:drip_message_changelist")
    steps_url = reverse("admin:drip_step_changelist")
    beat_stale = last_run is None or last_run < now - timedelta(minutes=1)
    return {
        "rows": [
            {"label": "failed messages in the last 24 h", "count": failed, "bad": failed > 0,
             "url": f"{messages_url}?" + urlencode({"status__in": "failed,bounced", "updated_at__gte": since.isoformat()})},
            {"label": "steps overdue (open, due more than a minute ago)", "count": overdue, "bad": overdue > 0,
             "url": f"{steps_url}?" + urlencode({"status__in": "pending,enqueued", "due_at__lt": overdue_before.isoformat()})},
            {"label": "messages whose outcome is unknown", "count": unknown, "bad": unknown > 0,
             "url": f"{messages_url}?" + urlencode({"status__exact": "failed", "error_class__exact": "outcome_unknown"})},
        ],
        "last_dispatch": utc_text(last_run) if last_run else "never",
        "beat_stale": beat_stale,
    }
