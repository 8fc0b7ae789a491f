"""A registration's story on one page: every step and message, in time order."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Prefetch
from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from drip.doors.console.display import step_outcome, when, zone_or_utc
from drip.models import DeliveryReport, Message, Registration, Step


@dataclass(frozen=True)
class Entry:
    at: datetime
    what: str  # "step", "email", "sms", or "report"
    title: str
    status: str
    detail: str
    order: int = 0

    def shown_at(self, zone: str) -> SafeString | str:
        return when(self.at, zone)


def entries(registration: Registration) -> list[Entry]:
    """Three queries whatever the history: steps, messages, their delivery reports."""
    steps = list(Step.objects.filter(registration=registration).order_by("due_at", "id"))
    messages = list(
        Message.objects.filter(registration=registration).select_related("step")
        .prefetch_related(Prefetch("reports", queryset=DeliveryReport.objects.order_by("occurred_at", "id")))
        .order_by("created_at", "id")
    )
    by_step: dict[int, list[Message]] = {}
    for m in messages:
        if m.step_id is not None:
            by_step.setdefault(m.step_id, []).append(m)
    rows: list[Entry] = []
    for s in steps:
        label = f"{s.key} (plan {s.plan_version})" if s.plan_version > 1 else s.key
        status = s.get_status_display().lower()
        due = "due" if s.status in Step.OPEN else status
        rows.append(Entry(s.due_at, "step", f"step {label}: {due}", status, step_outcome(s, by_step.get(s.pk, [])), 0))
    for m in messages:
        name = m.step.key if m.step else (f"{m.step_type or 'direct'}: {m.template_type}")
        rows.append(Entry(m.created_at, m.channel, f"{m.channel} {name} created", "queued", f"to {m.to or '-'}", 1))
        if m.sent_at:
            provider = f"provider id {m.provider_message_id}" if m.provider_message_id else ""
            rows.append(Entry(m.sent_at, m.channel, f"{m.channel} {name} sent", "sent", provider, 2))
        if m.delivered_at:
            rows.append(Entry(m.delivered_at, m.channel, f"{m.channel} {name} delivered", "delivered", "", 3))
        if m.status in (Message.Status.SKIPPED, Message.Status.FAILED, Message.Status.BOUNCED):
            word = m.get_status_display().lower()
            rows.append(Entry(m.updated_at, m.channel, f"{m.channel} {name} {word}", word, m.error, 4))
        elif m.status in (Message.Status.QUEUED, Message.Status.SENDING) and m.error:
            detail = f"verifying with the provider: {m.error}" if m.verify_at else m.error
            rows.append(Entry(m.updated_at, m.channel, f"{m.channel} {name} {m.status}", m.status, detail, 4))
        for r in m.reports.all():
            said = r.get_kind_display()
            detail = f"{r.provider}: {said}" + (f" ({r.detail})" if r.detail else "")
            rows.append(Entry(r.occurred_at, "report", f"{m.channel} {name}: provider said {said}", r.kind, detail, 5))
    rows.sort(key=lambda e: (e.at, e.order))
    return rows


def render(registration: Registration) -> SafeString:
    zone = zone_or_utc(registration.contact.timezone)
    rows = [{**e.__dict__, "at": e.shown_at(zone)} for e in entries(registration)]
    return render_to_string("admin/drip/timeline.html", {"rows": rows, "zone": zone})
