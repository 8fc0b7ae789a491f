"""Template preview: every template type on every channel it has files for, rendered as the
sender would render it, for a sample contact or a chosen registration, in the contact's
zone; and a test send of it to the operator through the real sender."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from drip.delivery.rendering import Rendered, RenderError, render_message
from drip.delivery.sms import sms_segments
from drip.domain.consent import has_consent, record_consent
from drip.engine.direct import NEEDED, check_template, send_direct, template_types
from drip.models import Channel, ConsentRecord, Contact, Event, Message, Registration
from drip.support.errors import FieldError

TEST_STEP_TYPE = "test"


@dataclass(frozen=True)
class Preview:
    template_type: str
    channel: str
    rendered: Rendered | None
    error: str = ""
    encoding: str = ""
    segments: int = 0


def available() -> list[tuple[str, str]]:
    """(template type, channel) for every pair whose files exist (drip.engine.direct.NEEDED)."""
    pairs = []
    for template_type in template_types():
        for channel in NEEDED:
            try:
                check_template(template_type, channel)
            except FieldError:
                continue
            pairs.append((template_type, str(channel)))
    return pairs


def sample_registration(zone: str = "America/New_York") -> Registration:
    """Unsaved rows: nothing is written to render a sample."""
    contact = Contact(pk=0, external_id="sample", first_name="Sam", last_name="Sample", email="sam@example.com",
                      phone="+14155550123", timezone=zone)
    event = Event(title="Sample webinar", starts_at=timezone.now() + timedelta(days=1), timezone=zone,
                  join_url="https://example.com/join", status=Event.Status.SCHEDULED)
    return Registration(contact=contact, event=event, external_id="sample-registration")


def preview(template_type: str, channel: str, registration: Registration) -> Preview:
    message = Message(contact=registration.contact, registration=registration, channel=channel,
                      template_type=template_type, to=registration.contact.address_for(channel))
    try:
        rendered = render_message(message)
    except RenderError as exc:
        return Preview(template_type, channel, None, str(exc))
    if channel == Channel.SMS:
        encoding, segments = sms_segments(rendered.text)
        return Preview(template_type, channel, rendered, encoding=encoding, segments=segments)
    return Preview(template_type, channel, rendered)


def operator_contact(username: str, email: str, phone: str = "") -> Contact:
    """The operator's own contact row (external id operator-<username>), with consent
    recorded by the operator for the test sends they ask for."""
    contact, _ = Contact.objects.get_or_create(
        external_id=f"operator-{username}", defaults={"email": email, "first_name": username, "phone": phone},
    )
    if contact.email != email:
        contact.email = email
        contact.save(update_fields=["email", "updated_at"])
    if not has_consent(contact, Channel.EMAIL):
        record_consent(contact, Channel.EMAIL, True, ConsentRecord.Source.ADMIN, detail=f"admin:{username}",
                       reason="test sends the operator asked for")
    return contact


# The test copies of events (one per operator) are rows of their own, never offered where an
# operator picks an event to enroll, move or import contacts into.
TEST_EVENT_PREFIX = "console-test-"


def enrollable_events() -> QuerySet[Event]:
    return Event.objects.filter(status=Event.Status.SCHEDULED).exclude(external_id__startswith=TEST_EVENT_PREFIX)


def send_test(template_type: str, channel: str, username: str, email: str, event: Event) -> Message:
    """Through drip.engine.direct.send_direct and the real sender, to the operator, marked
    step_type "test" and sent about a test copy of the event ("[test] <title>"), so the
    real event gains no registration and no funnel is started."""
    if channel != Channel.EMAIL:
        raise FieldError("test sends go to the operator's email address; preview SMS on the page", "channel")
    if not email:
        raise FieldError("your user has no email address; set one to receive test sends", "email")
    with transaction.atomic():
        contact = operator_contact(username, email)
        copy, _ = Event.objects.update_or_create(
            external_id=f"{TEST_EVENT_PREFIX}{username}",
            defaults={"title": f"[test] {event.title}", "starts_at": max(event.starts_at, timezone.now() + timedelta(days=1)),
                      "timezone": event.timezone, "join_url": event.join_url, "recording_url": event.recording_url,
                      "slides_url": event.slides_url, "status": Event.Status.SCHEDULED},
        )
        registration, _ = Registration.objects.get_or_create(contact=contact, event=copy)
        message, _ = send_direct(contact, channel, template_type, registration=registration, step_type=TEST_STEP_TYPE)
    return message


def from_address() -> str:
    return str(settings.DEFAULT_FROM_EMAIL)
