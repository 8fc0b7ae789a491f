"""Notices about an event sent outside its funnels: when it moves by more than
DRIP_RESCHEDULE_NOTICE_MINUTES, every active registrant with email consent gets a short
"new time" email at once. They are direct sends (drip.engine.direct): the same sender, the same
consent check at send time, the same unsubscribe link and headers as every other email."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from drip.domain.consent import ConsentView
from drip.engine.direct import send_direct_many
from drip.models import Channel, Event, Registration

NEW_TIME = "new_time"


def worth_a_notice(old_start: datetime, new_start: datetime, now: datetime | None = None) -> bool:
    """A few minutes' shift is not worth an email; a start moved into the past has no reader."""
    limit = timedelta(minutes=settings.DRIP_RESCHEDULE_NOTICE_MINUTES)
    return abs(new_start - old_start) > limit and new_start > (now or timezone.now())


def send_new_time_notices(event: Event, old_start: datetime, version: str) -> int:
    """One "new time" email per active registration whose contact may get email. `version`
    tells this reschedule from any other (the event's last change before it), so a repeated
    call for the same move (a retried request) sends nothing new while a later move that
    happens to return to an earlier time still notifies. Returns how many were queued."""
    registrations = list(
        Registration.objects.filter(event=event, status=Registration.Status.ACTIVE).exclude(contact__email="")
        .select_related("contact")
    )
    consent = ConsentView(r.contact for r in registrations)
    recipients = [
        (r, f"{NEW_TIME}:{r.pk}:{old_start.isoformat()}>{event.starts_at.isoformat()}@{version}")
        for r in registrations if consent.granted(r.contact, Channel.EMAIL)
    ]
    for registration, _ in recipients:
        registration.event = event  # the moved start, without a query per row
    # A notice still unsent when the event begins has nothing left to say.
    return len(send_direct_many(recipients, NEW_TIME, step_type=NEW_TIME, expires_at=event.starts_at))
