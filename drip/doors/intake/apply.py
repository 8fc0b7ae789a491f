"""Applying parsed intake messages: each one calls the domain services, and the answer for
the producer (camelCase, one result per message, in order) is built here.

A batch is all or nothing: one transaction, in order, so a message may refer to a row an
earlier one in the same batch created. Anything refused (an unknown id) rolls the whole batch
back; tasks are enqueued on commit only, so none of it ever runs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import groupby
from typing import Any, TypeVar

from django.db import IntegrityError, OperationalError, transaction

from drip.delivery.rendering import RenderError, render_message
from drip.domain.funnels import Anchor, registered
from drip.doors.intake.parse import ParsedEvent, parse_events, parse_json
from drip.doors.intake.schema import (
    Completion,
    DirectSend,
    Enrollment,
    EventCancellation,
    EventData,
    RegistrationCancellation,
    Reschedule,
)
from drip.engine import bulk, services
from drip.engine.direct import send_direct
from drip.models import Contact, Event, Message, Registration, Step
from drip.support.errors import FieldError, shown

log = logging.getLogger("drip.intake")
ATTEMPTS = 3  # of the batch's transaction, when it collides with a concurrent one
Result = dict[str, Any]
Data = TypeVar("Data", bound=EventData)
T = TypeVar("T")


def handle_body(raw: bytes | str) -> Result:
    return handle_payload(parse_json(raw))


def handle_payload(payload: Any) -> Result:
    """Validate and apply already-decoded JSON; returns the 202 body or raises FieldError."""
    results = apply_all(parse_events(payload))
    return {"accepted": len(results), "results": results}


def apply_all(events: list[ParsedEvent]) -> list[Result]:
    """All or nothing: one transaction; a FieldError rolls back every message of the batch."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with transaction.atomic():
                return _in_order(events)
        # IntegrityError: a concurrent request created the same contact, event or
        # registration and committed first; on the next attempt this one matches its rows.
        # OperationalError: a deadlock (PostgreSQL) or "database is locked" (SQLite, where a
        # worker's write makes a reading transaction's first write fail at once).
        except (IntegrityError, OperationalError) as exc:
            if attempt == ATTEMPTS:
                raise
            log.warning("intake batch collided with a concurrent write (attempt %d): %s", attempt, exc)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def _in_order(events: list[ParsedEvent]) -> list[Result]:
    """Each message in order; a run of consecutive enrollments is applied set-based
    (drip.engine.bulk), with the same results as applying them one at a time."""
    results: list[Result] = []
    for is_enrollment, run in groupby(events, key=lambda event: event.name == Enrollment.NAME):
        if is_enrollment:
            results += enrolled_all(list(run))
        else:
            results += [APPLY[event.name](event) for event in run]
    return results


def _data(p: ParsedEvent, kind: type[Data]) -> Data:
    """The parsed data, as the model its name was parsed with."""
    assert isinstance(p.data, kind), (p.name, type(p.data))
    return p.data


def _under(event: ParsedEvent, call: Callable[[], T]) -> T:
    """Run a service call; a FieldError it raises names the field under this message's path."""
    try:
        return call()
    except FieldError as exc:
        raise exc.under(event.at) from None


def _event_by_id(external_id: str, field: str) -> Event:
    # Locked: two producers changing one event at once apply one after the other.
    event = Event.objects.select_for_update().filter(external_id=external_id).first()
    if event is None:
        raise FieldError(f"unknown event {shown(external_id)}", field)
    return event


# --- event.enrolled ---------------------------------------------------------------------


def enrolled_all(events: list[ParsedEvent]) -> list[Result]:
    """`enrolled` for a whole run of enrollments, in a constant number of statements."""
    done = bulk.enroll_all([(p.at, _data(p, Enrollment)) for p in events])
    return [_enrolled_result(d) for d in done]


def _enrolled_result(d: bulk.Enrolled) -> Result:
    result: Result = {
        "name": "event.enrolled", "contactId": d.contact_id, "eventId": d.event_id, "registrationId": d.registration_id,
        "contact": d.contact, "event": d.event, "registration": d.registration, "eventStatus": d.event_status,
        "registrationStatus": d.registration_status, "stepsPlanned": d.steps_planned, "consent": d.consent,
    }
    if d.refused:
        result["consentRefused"] = d.refused
    if d.event_updated:
        result["eventUpdated"] = d.event_updated
    return {**result, **_moved(d.rescheduled)}


def _moved(rescheduled: services.Rescheduled | None) -> Result:
    """What a reschedule did, in the answer of the message that caused it."""
    if rescheduled is None or not rescheduled.moved:
        return {}
    return {"remindersMoved": rescheduled.reminders_moved, "noticesQueued": rescheduled.notices_queued}


# --- the others -------------------------------------------------------------------------


def completed(p: ParsedEvent) -> Result:
    """What `manage.py complete_event` does: attendance, completion, the post-event funnel.
    A second completion plans nothing and answers alreadyCompleted."""
    e = _data(p, Completion)
    event = _event_by_id(e.event_id, p.path("eventId"))
    if e.event_title and e.event_title != event.title:
        Event.objects.filter(pk=event.pk).update(title=e.event_title)
        event.title = e.event_title

    def complete() -> Result:
        attended = services.resolve_attendees(event, e.attended_registration_ids)
        links = {"recording_url": e.recording_url, "slides_url": e.slides_url}
        summary = services.complete_event(
            event, attended, e.completed_at, force=e.force, links={k: v for k, v in links.items() if v}
        )
        return {"name": "event.completed", **summary.as_dict()}

    return _under(p, complete)


def rescheduled(p: ParsedEvent) -> Result:
    e = _data(p, Reschedule)
    event = _event_by_id(e.event_id, p.path("eventId"))
    done = _under(p, lambda: services.reschedule(event, e.scheduled_at))
    start_funnels = [f.name for f in registered() if f.anchor is Anchor.START]
    planned = Step.objects.filter(
        registration__event=event, funnel__in=start_funnels, status__in=Step.OPEN, anchor_at=event.starts_at
    ).count()
    return {
        "name": "event.rescheduled", "eventId": event.external_id, "scheduledAt": event.starts_at.isoformat(),
        "rescheduled": done.moved, "openPreEventSteps": planned, "remindersMoved": done.reminders_moved,
        "noticesQueued": done.notices_queued,
    }


def event_cancelled(p: ParsedEvent) -> Result:
    event = _event_by_id(_data(p, EventCancellation).event_id, p.path("eventId"))
    result = {"name": "event.cancelled", "eventId": event.external_id, "alreadyCancelled": False, "stepsCancelled": 0}
    if event.status == Event.Status.CANCELLED:
        return {**result, "alreadyCancelled": True}
    return _under(p, lambda: {**result, "stepsCancelled": services.cancel_event(event)})


def registration_cancelled(p: ParsedEvent) -> Result:
    external_id = _data(p, RegistrationCancellation).registration_id
    registration = Registration.objects.select_for_update().filter(external_id=external_id).first()
    if registration is None:
        raise FieldError(f"unknown registration {shown(external_id)}", p.path("registrationId"))
    result = {"name": "registration.cancelled", "registrationId": registration.external_id, "alreadyCancelled": False, "stepsCancelled": 0}
    if registration.status == Registration.Status.CANCELLED:
        return {**result, "alreadyCancelled": True}
    return {**result, "stepsCancelled": services.cancel_registration(registration)}


def message_send(p: ParsedEvent) -> Result:
    e = _data(p, DirectSend)
    contact = Contact.objects.filter(external_id=e.contact_id).first()
    if contact is None:
        raise FieldError(f"unknown contact {shown(e.contact_id)}", p.path("contactId"))
    registration = None
    if e.registration_id is not None:
        registration = Registration.objects.select_related("event").filter(external_id=e.registration_id).first()
        if registration is None:
            raise FieldError(f"unknown registration {shown(e.registration_id)}", p.path("registrationId"))

    def send() -> Result:
        message, created = send_direct(
            contact, e.channel, e.template_type, registration=registration, step_type=e.step_type or "",
            idempotency_key=e.idempotency_key,
        )
        _check_renders(message)  # refused: the batch rolls back, and its task is never sent
        return {
            "name": "message.send", "messageId": message.pk, "created": created, "status": message.status,
            "contactId": contact.external_id, "channel": message.channel, "templateType": message.template_type,
        }

    return _under(p, send)


def _check_renders(message: Message) -> None:
    """Render once now, so a template that needs an event (most do) fails here with a 400
    rather than later in the worker."""
    try:
        render_message(message)
    except RenderError as exc:
        if message.registration_id is None:
            raise FieldError(
                f"template {shown(message.template_type)} needs an event: send a registrationId ({exc})", "registrationId"
            ) from None
        raise FieldError(f"template {shown(message.template_type)} cannot be rendered: {exc}", "templateType") from None


# Enrollments are applied in runs by enrolled_all (drip.engine.bulk, the one enrollment path).
APPLY: dict[str, Callable[[ParsedEvent], Result]] = {
    "event.completed": completed,
    "event.rescheduled": rescheduled,
    "event.cancelled": event_cancelled,
    "registration.cancelled": registration_cancelled,
    "message.send": message_send,
}
