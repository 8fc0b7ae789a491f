"""Stage 1 of the event API: producers' JSON in, strict pydantic models out, or a FieldError
naming the culprit by its JSON path. Nothing here touches the database."""
from __future__ import annotations

from drip.doors.intake.errors import field_error
from drip.doors.intake.parse import MAX_EVENTS, ParsedEvent, json_schema, parse_event, parse_events, parse_json
from drip.doors.intake.schema import (
    EVENTS,
    Completion,
    DirectSend,
    Enrollment,
    Envelope,
    EventCancellation,
    EventData,
    RegistrationCancellation,
    Reschedule,
)

__all__ = [
    "EVENTS", "MAX_EVENTS", "Completion", "DirectSend", "Enrollment", "Envelope", "EventCancellation", "EventData",
    "ParsedEvent", "RegistrationCancellation", "Reschedule", "field_error", "json_schema", "parse_event",
    "parse_events", "parse_json",
]
