"""pydantic's ValidationError → drip.support.errors.FieldError, worded as the event API always was.

A producer gets one error: the first pydantic found (fields are validated in declaration
order), its JSON path as `field` and a message that names the field the way the producer
wrote it ("contactId must be a string, not a number"). The wording lives in MESSAGES, keyed
by the error's type: pydantic's own types for what pydantic checks, ours (see
drip.doors.intake.schema) for the rest.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from drip.support.errors import FieldError

# {name}: the field as the producer wrote it ("contactId", "attendedRegistrationIds[1]");
# {type}: the JSON type of what was sent; the rest: the error's context.
MESSAGES: dict[str, str] = {
    "missing": "{name} is required",
    "string_type": "{name} must be a string, not {type}",
    "bool_type": "{name} must be true or false, not {type}",
    "list_type": "{name} must be a list of ids, not {type}",
    "dict_type": "{name} must be an object, not {type}",
    "model_type": 'an event must be an object {{"name": ..., "data": {{...}}}}, not {type}',
    "too_long": "{name} is longer than {max_length} characters",
    "string_too_long": "{name} is longer than {max_length} characters",
    "blank": "{name} must not be empty",
    "nul": "{name} must not contain NUL characters",
    "surrogate": "{name} is not valid Unicode (unpaired surrogate)",
    "control_character": "{name} must not contain control or format characters ({char} at position {position})",
    "string_unicode": "{name} is not valid Unicode (unpaired surrogate)",  # should pydantic-core see it first
    "datetime_format": "{name} must be an ISO 8601 date-time with an offset ({example}), not {shown}",
    "datetime_naive": "{name} has no UTC offset: {shown} is ambiguous; add Z or +HH:MM ({example})",
    "datetime_range": "{name} must be between 1970 and 2999, not {shown}",
    "in_future": "{name} is in the future ({moment})",
    "email": "{name} is not a valid email address: {shown}",
    "email_quoted": '{name} must not have a quoted local part ("..."@): {shown}',
    "email_ip_literal": "{name} must name a domain, not an IP address: {shown}",
    "phone_format": "{name} must be in E.164 format, + and the country code (e.g. +14155550123), not {shown}",
    "phone": "{name}: {reason}",
    "timezone": "{name}: {reason}",
    "url": "{name} must be an http(s) URL, not {shown}",
    "url_userinfo": "{name} must not carry user info (user@ before the host): {shown}",
    "event_name": "unknown event name {shown}; known: {known}",
    "template": "{reason}",
}
# Type errors whose input was JSON null: the value is missing, not mistyped.
TYPE_ERRORS = frozenset({"string_type", "bool_type", "list_type", "dict_type"})


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


def json_path(loc: tuple[int | str, ...]) -> str:
    """("attendedRegistrationIds", 1) → "attendedRegistrationIds[1]"; (2, "data") → "[2].data"."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


def field_error(exc: ValidationError, at: str = "") -> FieldError:
    """The first error of `exc` as a FieldError. `at` is where the validated value sits in the
    request ("", "[2].", "data.", "[2].data."): the error's path is relative to it."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    moved_to = error.get("ctx", {}).get("field")
    if moved_to:  # a check that names its culprit itself (drip.engine.direct.check_template)
        loc = (*loc[:-1], moved_to)
    name = json_path(loc)
    return FieldError(_message(error, name), name or None).under(at)


def _message(error: ErrorDetails, name: str) -> str:
    kind = error["type"]
    if kind in TYPE_ERRORS and error["input"] is None:
        kind = "missing"
    template = MESSAGES.get(kind)
    if template is None:  # a type not worded here: pydantic's own message, still named
        return f"{name}: {error['msg']}" if name else error["msg"]
    return template.format(name=name, type=json_type(error["input"]), **error.get("ctx", {}))
