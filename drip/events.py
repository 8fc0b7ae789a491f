"""Events in: the core shared by `POST /api/events` and `manage.py send_event`.

Two stages, so that a batch is all-or-nothing and bad input never reaches the database:

1. parse: JSON in, typed events out, without touching the database (shape, types, formats,
   template files). A bad field raises EventError naming it by its JSON path, e.g.
   "data.scheduledAt" for one event, "[2].data.scheduledAt" for the third of a list.
2. apply: every event of the batch in one transaction, in order, so an event may refer to a
   row an earlier one in the same batch created. Anything refused there (an unknown id)
   rolls the whole batch back; tasks are enqueued on commit only, so none of it ever runs.

Field names are camelCase, as the producers of the system we replace sent them.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from campaigns.completion import CompletionError, complete_event, resolve_attendees
from campaigns.funnels import PRE_EVENT

from .consent import has_consent, latest_record, record_consent
from .direct import DirectSendError, check_template, send_direct
from .models import Channel, ConsentRecord, Contact, Event, Message, Registration, Step
from .rendering import RenderError, render_message
from .validation import normalize_phone, validate_timezone

log = logging.getLogger("drip.events")
MAX_EVENTS = 1000  # per request: one transaction must stay short
ATTEMPTS = 3  # of the batch's transaction, when it collides with a concurrent one
ID_LENGTH = 200  # the external_id columns
# Far enough from datetime's limits that due-time arithmetic (up to +7 days) cannot overflow.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=dt_timezone.utc), datetime(2999, 12, 31, tzinfo=dt_timezone.utc)
# A producer's clock may run a little ahead of ours; a completion further ahead is a mistake.
CLOCK_SKEW = timedelta(minutes=5)


class EventError(ValueError):
    """Bad input: `field` is the JSON path of the culprit, or None for the body as a whole."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        return {"error": str(self), "field": self.field}


# --- stage 1: parsing ------------------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages a producer understands."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def shown(value: str, limit: int = 60) -> str:
    """A value quoted for an error message, cut short: the body may be a megabyte of it."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


class Fields:
    """Reads one event's `data` object; every error names the field by its full path."""

    def __init__(self, data: dict[str, Any], at: str) -> None:
        self.data = data
        self.at = at  # "data." or "[2].data."

    def path(self, name: str) -> str:
        return f"{self.at}{name}"

    def _value(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise EventError(f"{name} is required", self.path(name))
        return value

    def text(self, name: str, required: bool = True, max_length: int = ID_LENGTH, blank: bool = False) -> str | None:
        value = self._value(name, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise EventError(f"{name} must be a string, not {json_type(value)}", self.path(name))
        if not blank and not value.strip():
            raise EventError(f"{name} must not be empty", self.path(name))
        if len(value) > max_length:
            raise EventError(f"{name} is longer than {max_length} characters", self.path(name))
        # The database refuses both (PostgreSQL: NUL in text; any: unencodable UTF-8), and a
        # client must get a 400 for them, not a 500.
        if "\x00" in value:
            raise EventError(f"{name} must not contain NUL characters", self.path(name))
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EventError(f"{name} is not valid Unicode (unpaired surrogate)", self.path(name)) from None
        return value

    def flag(self, name: str) -> bool | None:
        value = self._value(name, required=False)
        if value is not None and not isinstance(value, bool):
            raise EventError(f"{name} must be true or false, not {json_type(value)}", self.path(name))
        return value

    def moment(self, name: str, required: bool = True) -> datetime | None:
        value = self.text(name, required, max_length=64)
        if value is None:
            return None
        example = "e.g. 2026-12-01T15:00:00-05:00 or 2026-12-01T20:00:00Z"
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise EventError(f"{name} must be an ISO 8601 date-time with an offset ({example}), not {shown(value)}", self.path(name)) from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise EventError(f"{name} has no UTC offset: {shown(value)} is ambiguous; add Z or +HH:MM ({example})", self.path(name))
        try:
            parsed = parsed.astimezone(dt_timezone.utc)
        except OverflowError:
            parsed = EARLIEST - timedelta(days=1)  # refused just below
        if not EARLIEST <= parsed <= LATEST:
            raise EventError(f"{name} must be between 1970 and 2999, not {shown(value)}", self.path(name))
        return parsed

    def email(self, name: str) -> str:
        value = self.text(name, max_length=254).strip()
        try:
            validate_email(value)
        except ValidationError:
            raise EventError(f"{name} is not a valid email address: {shown(value)}", self.path(name)) from None
        return value

    def phone(self, name: str) -> str | None:
        """E.164 (spaces tolerated, stored without). "" means the contact has no phone."""
        value = self.text(name, required=False, max_length=32, blank=True)
        if value is None or not value.strip():
            return None if value is None else ""
        if not value.strip().startswith("+"):
            raise EventError(
                f"{name} must be in E.164 format, + and the country code (e.g. +14155550123), not {shown(value)}",
                self.path(name),
            )
        try:
            return normalize_phone(value)
        except ValidationError as exc:
            raise EventError(f"{name}: {exc.messages[0]}", self.path(name)) from None

    def zone(self, name: str) -> str | None:
        value = self.text(name, required=False, max_length=64)
        if value is None:
            return None
        try:
            validate_timezone(value)
        except ValidationError as exc:
            raise EventError(f"{name}: {exc.messages[0]}", self.path(name)) from None
        return value

    def url(self, name: str) -> str | None:
        value = self.text(name, required=False, max_length=500, blank=True)
        if not value:
            return value
        try:
            URLValidator(schemes=["http", "https"])(value)
        except ValidationError:
            raise EventError(f"{name} must be an http(s) URL, not {shown(value)}", self.path(name)) from None
        return value

    def id_list(self, name: str) -> list[str]:
        value = self._value(name, required=False)
        if value is None:
            return []
        if not isinstance(value, list):
            raise EventError(f"{name} must be a list of ids, not {json_type(value)}", self.path(name))
        items = {f"{name}[{i}]": item for i, item in enumerate(value)}
        each = Fields(items, self.at)
        return [each.text(key) for key in items]


@dataclass(frozen=True)
class Parsed:
    # Where this event's data sits in the request ("data." or "[2].data."), so errors found
    # while applying it name the field the same way parse errors do.
    at: str

    def path(self, name: str) -> str:
        return f"{self.at}{name}"


@dataclass(frozen=True)
class Enrollment(Parsed):
    contact_id: str
    event_id: str
    registration_id: str
    event_title: str
    scheduled_at: datetime
    contact_email: str
    contact_phone: str | None
    first_name: str | None
    last_name: str | None
    timezone: str | None
    join_url: str | None
    email_consent: bool | None
    sms_consent: bool | None


@dataclass(frozen=True)
class Completion(Parsed):
    event_id: str
    event_title: str | None
    completed_at: datetime
    attended_registration_ids: list[str]


@dataclass(frozen=True)
class Reschedule(Parsed):
    event_id: str
    scheduled_at: datetime


@dataclass(frozen=True)
class EventCancellation(Parsed):
    event_id: str


@dataclass(frozen=True)
class RegistrationCancellation(Parsed):
    registration_id: str


@dataclass(frozen=True)
class DirectSend(Parsed):
    contact_id: str
    registration_id: str | None
    template_type: str
    channel: str
    step_type: str
    idempotency_key: str | None


def parse_enrolled(f: Fields) -> Enrollment:
    return Enrollment(
        at=f.at, contact_id=f.text("contactId"), event_id=f.text("eventId"), registration_id=f.text("registrationId"),
        event_title=f.text("eventTitle", max_length=300), scheduled_at=f.moment("scheduledAt"),
        contact_email=f.email("contactEmail"), contact_phone=f.phone("contactPhone"),
        first_name=f.text("firstName", required=False, blank=True),
        last_name=f.text("lastName", required=False, blank=True),
        timezone=f.zone("timezone"), join_url=f.url("joinUrl"),
        email_consent=f.flag("emailConsent"), sms_consent=f.flag("smsConsent"),
    )


def parse_completed(f: Fields) -> Completion:
    completed_at = f.moment("completedAt")
    if completed_at > timezone.now() + CLOCK_SKEW:
        raise EventError(f"completedAt is in the future ({completed_at.isoformat()})", f.path("completedAt"))
    return Completion(
        at=f.at, event_id=f.text("eventId"), event_title=f.text("eventTitle", required=False, max_length=300),
        completed_at=completed_at, attended_registration_ids=f.id_list("attendedRegistrationIds"),
    )


def parse_rescheduled(f: Fields) -> Reschedule:
    return Reschedule(at=f.at, event_id=f.text("eventId"), scheduled_at=f.moment("scheduledAt"))


def parse_event_cancelled(f: Fields) -> EventCancellation:
    return EventCancellation(at=f.at, event_id=f.text("eventId"))


def parse_registration_cancelled(f: Fields) -> RegistrationCancellation:
    return RegistrationCancellation(at=f.at, registration_id=f.text("registrationId"))


def parse_message_send(f: Fields) -> DirectSend:
    channel = f.text("channel", max_length=20)
    template_type = f.text("templateType", max_length=60)
    try:
        check_template(template_type, channel)
    except DirectSendError as exc:
        raise EventError(str(exc), f.path(exc.field)) from None
    return DirectSend(
        at=f.at, contact_id=f.text("contactId"), registration_id=f.text("registrationId", required=False),
        template_type=template_type, channel=channel, step_type=f.text("stepType", required=False, max_length=60, blank=True) or "",
        idempotency_key=f.text("idempotencyKey", required=False),
    )


# --- stage 2: applying -----------------------------------------------------------------


def _event_by_id(external_id: str, field: str) -> Event:
    # Locked: two producers changing one event at once apply one after the other.
    event = Event.objects.select_for_update().filter(external_id=external_id).first()
    if event is None:
        raise EventError(f"unknown event {shown(external_id)}", field)
    return event


def enroll(e: Enrollment) -> dict[str, Any]:
    """Upsert contact, event and registration. A new registration starts the pre-event
    funnel (campaigns.signals); the same registrationId again matches it and plans nothing."""
    contact, contact_state = _upsert_contact(e)
    consent, refused = _record_consent(contact, e)
    event, event_state = _upsert_event(e)
    registration, registration_state = _upsert_registration(e, contact, event)
    planned = 0
    if registration_state == "created":
        planned = Step.objects.filter(registration=registration, status__in=Step.OPEN).count()
    result = {
        "name": "event.enrolled", "contactId": contact.external_id, "eventId": event.external_id,
        "registrationId": registration.external_id, "contact": contact_state, "event": event_state,
        "registration": registration_state, "eventStatus": event.status, "registrationStatus": registration.status,
        "stepsPlanned": planned, "consent": consent,
    }
    if refused:
        result["consentRefused"] = refused
    return result


def _upsert_contact(e: Enrollment) -> tuple[Contact, str]:
    given = {
        "email": e.contact_email, "phone": e.contact_phone, "first_name": e.first_name,
        "last_name": e.last_name, "timezone": e.timezone,
    }
    given = {k: v for k, v in given.items() if v is not None}  # absent means "leave as it is"
    contact, created = Contact.objects.get_or_create(external_id=e.contact_id, defaults=given)
    if created:
        return contact, "created"
    changed = [k for k, v in given.items() if getattr(contact, k) != v]
    for name in changed:
        setattr(contact, name, given[name])
    if changed:
        contact.save(update_fields=[*changed, "updated_at"])
    return contact, "updated" if changed else "matched"


def _record_consent(contact: Contact, e: Enrollment) -> tuple[dict[str, bool], dict[str, str]]:
    """Returns the consent in force per channel and, per channel, why a grant was refused."""
    refused: dict[str, str] = {}
    for channel, wanted in ((Channel.EMAIL, e.email_consent), (Channel.SMS, e.sms_consent)):
        if wanted is None:
            continue
        record_consent(contact, channel, wanted, ConsentRecord.Source.API, detail="api:event.enrolled")
        if wanted and not has_consent(contact, channel):
            # Only a recipient's own revocation (STOP, unsubscribe, bounce) outlives a grant.
            record = latest_record(contact, channel)
            refused[channel] = f"suppressed by the {record.source} ({record.detail})" if record else "refused"
    consent = {channel: has_consent(contact, channel) for channel in Channel.values}
    return consent, refused


def _upsert_event(e: Enrollment) -> tuple[Event, str]:
    defaults = {
        "title": e.event_title, "starts_at": e.scheduled_at, "timezone": e.timezone or "UTC", "join_url": e.join_url or "",
    }
    event, created = Event.objects.get_or_create(external_id=e.event_id, defaults=defaults)
    if created:
        return event, "created"
    event = Event.objects.select_for_update().get(pk=event.pk)
    changed = []
    if event.title != e.event_title:
        event.title, changed = e.event_title, [*changed, "title"]
    if e.join_url is not None and event.join_url != e.join_url:
        event.join_url, changed = e.join_url, [*changed, "join_url"]
    rescheduled = event.starts_at != e.scheduled_at
    if rescheduled:
        if event.status != Event.Status.SCHEDULED:
            raise EventError(
                f"event {shown(e.event_id)} is {event.status}: its start can no longer change", e.path("scheduledAt")
            )
        event.starts_at, changed = e.scheduled_at, [*changed, "starts_at"]
    if changed:
        # A save, not an update: the Event signal re-plans the pre-event steps when the start moved.
        event.save(update_fields=[*changed, "updated_at"])
    return event, "rescheduled" if rescheduled else "updated" if changed else "matched"


def _upsert_registration(e: Enrollment, contact: Contact, event: Event) -> tuple[Registration, str]:
    existing = Registration.objects.select_related("contact", "event").filter(external_id=e.registration_id).first()
    if existing is not None:
        if existing.contact_id != contact.pk:
            raise EventError(
                f"registration {shown(e.registration_id)} belongs to another contact ({shown(existing.contact.external_id)})",
                e.path("registrationId"),
            )
        if existing.event_id != event.pk:
            raise EventError(
                f"registration {shown(e.registration_id)} belongs to another event ({shown(existing.event.external_id)})",
                e.path("registrationId"),
            )
        return existing, "matched"
    other = Registration.objects.filter(contact=contact, event=event).first()
    if other is not None:
        raise EventError(
            f"contact {shown(e.contact_id)} is already registered for event {shown(e.event_id)}"
            f" as registration {shown(other.external_id)}",
            e.path("registrationId"),
        )
    # Created with a save: the Registration signal plans the pre-event funnel.
    registration = Registration.objects.create(external_id=e.registration_id, contact=contact, event=event)
    return registration, "created"


def complete(e: Completion) -> dict[str, Any]:
    """What `manage.py complete_event` does: attendance, completion, the post-event funnel.
    A second completion plans nothing and answers alreadyCompleted."""
    event = _event_by_id(e.event_id, e.path("eventId"))
    if e.event_title and e.event_title != event.title:
        Event.objects.filter(pk=event.pk).update(title=e.event_title)  # no signal: only the title changed
        event.title = e.event_title
    try:
        attended = resolve_attendees(event, e.attended_registration_ids)
        summary = complete_event(event, attended, e.completed_at)
    except CompletionError as exc:
        raise EventError(str(exc), e.path(exc.field)) from None
    return {"name": "event.completed", **summary.as_dict()}


def reschedule(e: Reschedule) -> dict[str, Any]:
    event = _event_by_id(e.event_id, e.path("eventId"))
    if event.status != Event.Status.SCHEDULED:
        raise EventError(f"event {shown(e.event_id)} is {event.status} and can no longer be rescheduled", e.path("eventId"))
    moved = event.starts_at != e.scheduled_at
    if moved:
        event.starts_at = e.scheduled_at
        event.save(update_fields=["starts_at", "updated_at"])  # the signal re-plans
    replanned = Step.objects.filter(
        registration__event=event, funnel=PRE_EVENT.name, status__in=Step.OPEN, anchor_at=event.starts_at
    ).count()
    return {
        "name": "event.rescheduled", "eventId": event.external_id, "scheduledAt": event.starts_at.isoformat(),
        "rescheduled": moved, "openPreEventSteps": replanned,
    }


def cancel_event(e: EventCancellation) -> dict[str, Any]:
    event = _event_by_id(e.event_id, e.path("eventId"))
    result = {"name": "event.cancelled", "eventId": event.external_id, "alreadyCancelled": False, "stepsCancelled": 0}
    if event.status == Event.Status.CANCELLED:
        return {**result, "alreadyCancelled": True}
    if event.status == Event.Status.COMPLETED:
        raise EventError(
            f"event {shown(e.event_id)} is completed and cannot be cancelled; "
            "send registration.cancelled to stop a registration's follow-ups",
            e.path("eventId"),
        )
    open_steps = Step.objects.filter(registration__event=event, status__in=Step.OPEN).count()
    event.status = Event.Status.CANCELLED
    event.save(update_fields=["status", "updated_at"])  # the signal cancels the steps
    return {**result, "stepsCancelled": open_steps}


def cancel_registration(e: RegistrationCancellation) -> dict[str, Any]:
    registration = Registration.objects.select_for_update().filter(external_id=e.registration_id).first()
    if registration is None:
        raise EventError(f"unknown registration {shown(e.registration_id)}", e.path("registrationId"))
    result = {"name": "registration.cancelled", "registrationId": registration.external_id, "alreadyCancelled": False, "stepsCancelled": 0}
    if registration.status == Registration.Status.CANCELLED:
        return {**result, "alreadyCancelled": True}
    open_steps = registration.steps.filter(status__in=Step.OPEN).count()
    registration.status = Registration.Status.CANCELLED
    registration.cancelled_at = timezone.now()
    registration.save(update_fields=["status", "cancelled_at"])  # the signal cancels the steps
    return {**result, "stepsCancelled": open_steps}


def send(e: DirectSend) -> dict[str, Any]:
    contact = Contact.objects.filter(external_id=e.contact_id).first()
    if contact is None:
        raise EventError(f"unknown contact {shown(e.contact_id)}", e.path("contactId"))
    registration = None
    if e.registration_id is not None:
        registration = Registration.objects.select_related("event").filter(external_id=e.registration_id).first()
        if registration is None:
            raise EventError(f"unknown registration {shown(e.registration_id)}", e.path("registrationId"))
    _check_renders(e, contact, registration)
    try:
        message, created = send_direct(
            contact, e.channel, e.template_type, registration=registration, step_type=e.step_type,
            idempotency_key=e.idempotency_key,
        )
    except DirectSendError as exc:
        raise EventError(str(exc), e.path(exc.field)) from None
    return {
        "name": "message.send", "messageId": message.pk, "created": created, "status": message.status,
        "contactId": contact.external_id, "channel": message.channel, "templateType": message.template_type,
    }


def _check_renders(e: DirectSend, contact: Contact, registration: Registration | None) -> None:
    """Render once now, so a template that needs an event (most do) fails here with a 400
    rather than later in the worker."""
    try:
        render_message(Message(contact=contact, registration=registration, channel=e.channel, template_type=e.template_type))
    except RenderError as exc:
        if registration is None:
            raise EventError(
                f"template {shown(e.template_type)} needs an event: send a registrationId ({exc})", e.path("registrationId")
            ) from None
        raise EventError(f"template {shown(e.template_type)} cannot be rendered: {exc}", e.path("templateType")) from None


# --- the registry and the entry points ------------------------------------------------


@dataclass(frozen=True)
class EventKind:
    parse: Callable[[Fields], Parsed]
    apply: Callable[[Any], dict[str, Any]]


EVENTS: dict[str, EventKind] = {
    "event.enrolled": EventKind(parse_enrolled, enroll),
    "event.completed": EventKind(parse_completed, complete),
    "event.rescheduled": EventKind(parse_rescheduled, reschedule),
    "event.cancelled": EventKind(parse_event_cancelled, cancel_event),
    "registration.cancelled": EventKind(parse_registration_cancelled, cancel_registration),
    "message.send": EventKind(parse_message_send, send),
}


@dataclass(frozen=True)
class ParsedEvent:
    name: str
    data: Parsed


def parse_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; a deeply
    # nested body exhausts the parser's recursion.
    except (ValueError, RecursionError) as exc:
        raise EventError(f"malformed JSON: {exc}", None) from None


def parse_events(payload: Any) -> list[ParsedEvent]:
    if isinstance(payload, dict):
        return [parse_event(payload, "")]
    if isinstance(payload, list):
        if len(payload) > MAX_EVENTS:
            raise EventError(f"at most {MAX_EVENTS} events per request, got {len(payload)}", None)
        return [parse_event(item, f"[{i}].") for i, item in enumerate(payload)]
    raise EventError(f'the body must be an event {{"name": ..., "data": {{...}}}} or a list of them, not {json_type(payload)}', None)


def parse_event(item: Any, at: str) -> ParsedEvent:
    if not isinstance(item, dict):
        raise EventError(f'an event must be an object {{"name": ..., "data": {{...}}}}, not {json_type(item)}', at.rstrip(".") or None)
    name = item.get("name")
    if not isinstance(name, str):
        raise EventError("name is required" if name is None else f"name must be a string, not {json_type(name)}", f"{at}name")
    kind = EVENTS.get(name)
    if kind is None:
        raise EventError(f"unknown event name {shown(name)}; known: {', '.join(EVENTS)}", f"{at}name")
    data = item.get("data")
    if not isinstance(data, dict):
        raise EventError("data is required" if data is None else f"data must be an object, not {json_type(data)}", f"{at}data")
    return ParsedEvent(name, kind.parse(Fields(data, f"{at}data.")))


def apply_events(events: list[ParsedEvent]) -> list[dict[str, Any]]:
    """All or nothing: one transaction; an EventError rolls back every event of the batch."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with transaction.atomic():
                return [EVENTS[event.name].apply(event.data) for event in events]
        # IntegrityError: a concurrent request created the same contact, event or
        # registration and committed first; on the next attempt this one matches its rows.
        # OperationalError: a deadlock (PostgreSQL) or "database is locked" (SQLite, where a
        # worker's write makes a reading transaction's first write fail at once).
        except (IntegrityError, OperationalError) as exc:
            if attempt == ATTEMPTS:
                raise
            log.warning("event batch collided with a concurrent write (attempt %d): %s", attempt, exc)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def handle_events(payload: Any) -> dict[str, Any]:
    """Validate and apply already-parsed JSON; returns the 202 body or raises EventError."""
    results = apply_events(parse_events(payload))
    return {"accepted": len(results), "results": results}


def handle_body(raw: bytes | str) -> dict[str, Any]:
    return handle_events(parse_json(raw))
