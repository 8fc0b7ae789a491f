"""Small builders for a test world: contacts with consent, events, registrations."""
from __future__ import annotations

from datetime import datetime, timedelta
from itertools import count
from typing import Any

from django.utils import timezone

from drip.domain.consent import record_consent
from drip.engine import services
from drip.models import Channel, ConsentRecord, Contact, Event, Registration, Step
from drip.timer import scheduler

_seq = count(1)


def make_contact(email_consent: bool = True, sms_consent: bool = True, phone: str | None = None, **fields: object) -> Contact:
    n = next(_seq)
    phone = f"+1415555{n % 10000:04d}" if phone is None else phone
    data: dict[str, object] = {"external_id": f"c{n}", "email": f"person{n}@example.com", "phone": phone, "first_name": f"Person{n}",
            "timezone": "America/New_York"}
    data.update(fields)
    contact = Contact.objects.create(**data)
    if email_consent:
        record_consent(contact, Channel.EMAIL, True, ConsentRecord.Source.API, detail="test")
    if sms_consent:
        record_consent(contact, Channel.SMS, True, ConsentRecord.Source.API, detail="test")
    return contact


def make_event(starts_in: float = 3600 * 48, starts_at: datetime | None = None, **fields: object) -> Event:
    n = next(_seq)
    data = {"external_id": f"e{n}", "title": f"Webinar {n}", "timezone": "America/New_York",
            "join_url": f"https://example.com/join/{n}",
            "starts_at": starts_at or timezone.now() + timedelta(seconds=starts_in)}
    data.update(fields)
    return Event.objects.create(**data)


def enroll(contact: Contact, event: Event) -> Registration:
    """Through the service every door calls: the registration and its pre-event funnel."""
    return services.enroll(contact, event, f"r{next(_seq)}").registration


def register_quietly(contact: Contact, event: Event) -> Registration:
    """A registration without its funnel (only the service plans one): for direct sends."""
    return Registration.objects.create(contact=contact, event=event, external_id=f"r{next(_seq)}")


def steps_due_together(n: int, due: datetime, key: str = "reminder_1h", **contact_fields: Any) -> list[Step]:
    """n registrations of one event, each with the same pre-event step due at `due`,
    planned as the planner does it (claimed and enqueued when inside the horizon)."""
    event = make_event(starts_in=3600 * 48)
    registrations = [register_quietly(make_contact(**contact_fields), event) for _ in range(n)]
    return scheduler.schedule_steps([
        Step(registration=r, funnel="pre_event", key=key, anchor_at=event.starts_at, due_at=due, expires_at=event.starts_at)
        for r in registrations
    ])
