"""The event API's models: one strict pydantic model per event name, for its `data` object.

Field names are camelCase in JSON (the producers of the system we replace sent them so) and
snake_case here. Types are strict: "1" is no number and "yes" no boolean. JSON null means
"not given": an error for a required field, the default for an optional one. Unknown keys are
ignored, so a producer may send more than we read.

Every check raises an error whose type keys the wording in drip.doors.intake.errors; the checks
themselves never name the field, because pydantic knows its path and they do not.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, ClassVar

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.timezone import now
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import ComputedFieldInfo, FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from drip.domain.validation import (
    first_refused_character,
    normalize_phone,
    validate_email_address,
    validate_http_url,
    validate_timezone,
)
from drip.engine import direct
from drip.support.errors import FieldError

ID_LENGTH = 200  # the external_id columns
# Far enough from datetime's limits that due-time arithmetic (up to +7 days) cannot overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2999, 12, 31, tzinfo=UTC)
# A producer's clock may run a little ahead of ours; a completion further ahead is a mistake.
CLOCK_SKEW = timedelta(minutes=5)
MOMENT_EXAMPLE = "e.g. 2026-12-01T15:00:00-05:00 or 2026-12-01T20:00:00Z"


def shown(value: str, limit: int = 60) -> str:
    """A value quoted for an error message, cut short: the body may be a megabyte of it."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def refuse(error_type: str, template: str, **context: Any) -> PydanticCustomError:
    """An error for drip.doors.intake.errors to word; `template` is pydantic's own fallback text."""
    return PydanticCustomError(error_type, template, context)


def refused_by(exc: DjangoValidationError, value: str) -> PydanticCustomError:
    """A drip.domain.validation refusal (the rule every door shares) as an error of the same type."""
    error = exc.error_list[0]
    reason = error.message % error.params if error.params else str(error.message)
    return refuse(error.code or "invalid", "{reason}", reason=reason, shown=shown(value))


# --- text --------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A string field: strict str, then the checks in the old parser's order (blank, length,
    NUL, unpaired surrogate, then control and format characters), so a value wrong in two
    ways gets the same error as before.

    Done in one validator rather than with pydantic's max_length: pydantic-core checks the
    length in Rust, which refuses unpaired surrogates first, with its own wording."""

    max_length: int
    blank: bool = False  # whether "" and whitespace are accepted
    joiners: bool = False  # whether ZWNJ / ZWJ are (names and titles: drip.domain.validation.JOINERS)

    def check(self, value: str) -> str:
        if not self.blank and not value.strip():
            raise refuse("blank", "must not be empty")
        if len(value) > self.max_length:
            raise refuse("too_long", "is longer than {max_length} characters", max_length=self.max_length)
        # The database refuses both (PostgreSQL: NUL in text; any: unencodable UTF-8), and a
        # client must get a 400 for them, not a 500.
        if "\x00" in value:
            raise refuse("nul", "must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise refuse("surrogate", "is not valid Unicode (unpaired surrogate)") from None
        # A newline in an id forges a log line, U+202E reverses what an operator reads.
        found = first_refused_character(value, allow_joiners=self.joiners)
        if found is not None:
            raise refuse(
                "control_character", "must not contain control or format characters ({char} at position {position})",
                char=f"U+{ord(found[1]):04X}", position=found[0],
            )
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, core_schema.str_schema(strict=True))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # \S: not only whitespace, which is what "must not be empty" means.
        return {**handler(schema), "maxLength": self.max_length, **({} if self.blank else {"pattern": r"\S"})}


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata
class JsonSchemaExtra:
    """Adds keywords to a type's JSON Schema without changing how it validates."""

    extra: dict[str, Any]

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**handler(schema), **self.extra}


Id = Annotated[str, Text(ID_LENGTH)]
Title = Annotated[str, Text(300, joiners=True)]
PersonName = Annotated[str, Text(ID_LENGTH, blank=True, joiners=True)]  # "" clears it
Channel = Annotated[str, Text(20)]
TemplateType = Annotated[str, Text(60)]
StepType = Annotated[str, Text(60, blank=True)]


# --- formats -------------------------------------------------------------------------


def _email(value: str) -> str:
    value = value.strip()
    try:
        validate_email_address(value)
    except DjangoValidationError as exc:
        if exc.error_list[0].code in ("email_quoted", "email_ip_literal"):
            raise refused_by(exc, value) from None
        raise refuse("email", "is not a valid email address: {shown}", shown=shown(value)) from None
    return value


def _phone(value: str) -> str:
    """E.164 (spaces tolerated, stored without). "" means the contact has no phone."""
    if not value.strip():
        return ""
    if not value.strip().startswith("+"):
        raise refuse(
            "phone_format", "must be in E.164 format, + and the country code (e.g. +14155550123), not {shown}",
            shown=shown(value),
        )
    try:
        return normalize_phone(value)
    except DjangoValidationError as exc:
        raise refuse("phone", "{reason}", reason=exc.messages[0]) from None


def _zone(value: str) -> str:
    try:
        validate_timezone(value)
    except DjangoValidationError as exc:
        raise refuse("timezone", "{reason}", reason=exc.messages[0]) from None
    return value


@lru_cache(maxsize=256)  # a list's items often share it (the event's join URL)
def _url(value: str) -> str:
    if not value:  # "" clears the URL
        return value
    try:
        validate_http_url(value)
    except DjangoValidationError as exc:
        raise refused_by(exc, value) from None
    return value


@lru_cache(maxsize=256)  # a list's items often share it (the event's start)
def _utc_moment(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise refuse(
            "datetime_format", "must be an ISO 8601 date-time with an offset ({example}), not {shown}",
            example=MOMENT_EXAMPLE, shown=shown(value),
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise refuse(
            "datetime_naive", "has no UTC offset: {shown} is ambiguous; add Z or +HH:MM ({example})",
            example=MOMENT_EXAMPLE, shown=shown(value),
        )
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        parsed = EARLIEST - timedelta(days=1)  # refused just below
    if not EARLIEST <= parsed <= LATEST:
        raise refuse("datetime_range", "must be between 1970 and 2999, not {shown}", shown=shown(value))
    return parsed


def _not_in_future(value: datetime) -> datetime:
    if value > now() + CLOCK_SKEW:
        raise refuse("in_future", "is in the future ({moment})", moment=value.isoformat())
    return value


@dataclass(frozen=True)
class FromText:
    """A value sent as a string: validated as `text` (the same checks and errors as any text
    field), then converted. The Python type is the converted one, the JSON Schema a string."""

    text: Text
    convert: Callable[[str], Any]
    json_format: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            self.convert, self.text.__get_pydantic_core_schema__(str, handler),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.isoformat()),
        )

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {**self.text.__get_pydantic_json_schema__(schema, handler), "format": self.json_format}


Email = Annotated[str, Text(254), AfterValidator(_email), JsonSchemaExtra({"format": "email"})]
Phone = Annotated[str, Text(32, blank=True), AfterValidator(_phone)]  # "" means no phone
Zone = Annotated[str, Text(64), AfterValidator(_zone)]
Url = Annotated[str, Text(500, blank=True), AfterValidator(_url)]  # "" clears it (so no "format": "uri")
# Offset-aware ISO 8601, converted to UTC.
Moment = Annotated[datetime, FromText(Text(64), _utc_moment, "date-time")]
PastMoment = Annotated[Moment, AfterValidator(_not_in_future)]


# --- the models ----------------------------------------------------------------------


def _json_title(name: str, info: FieldInfo | ComputedFieldInfo) -> str:
    return getattr(info, "alias", None) or name  # the JSON Schema titles a field as producers spell it


class EventData(BaseModel):
    """The `data` of one event. Subclasses declare their fields in the order the old parser
    checked them: pydantic reports errors in field order, and the first one is answered."""

    model_config = ConfigDict(
        strict=True, frozen=True, extra="ignore", field_title_generator=_json_title,
    )
    NAME: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # null is "not given": "is required" for a required field, the default otherwise.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Enrollment(EventData):
    """Upserts contact, event and registration; the same registrationId twice enrolls once."""

    NAME = "event.enrolled"

    contact_id: Id = Field(alias="contactId")
    event_id: Id = Field(alias="eventId")
    registration_id: Id = Field(alias="registrationId")
    event_title: Title = Field(alias="eventTitle")
    scheduled_at: Moment = Field(alias="scheduledAt")
    contact_email: Email = Field(alias="contactEmail")
    contact_phone: Phone | None = Field(None, alias="contactPhone")  # "" means the contact has no phone
    first_name: PersonName | None = Field(None, alias="firstName")
    last_name: PersonName | None = Field(None, alias="lastName")
    timezone: Zone | None = Field(None, alias="timezone")
    join_url: Url | None = Field(None, alias="joinUrl")
    # This registrant's own link (Zoom's per-registrant links): the event's link stays as it is.
    registrant_join_url: Url | None = Field(None, alias="registrantJoinUrl")
    email_consent: bool | None = Field(None, alias="emailConsent")  # None: leave the consent as it is
    sms_consent: bool | None = Field(None, alias="smsConsent")


class Completion(EventData):
    """Completes the event and starts the post-event funnel; attendance first, if given."""

    NAME = "event.completed"

    completed_at: PastMoment = Field(alias="completedAt")
    event_id: Id = Field(alias="eventId")
    event_title: Title | None = Field(None, alias="eventTitle")
    attended_registration_ids: list[Id] = Field(default_factory=list, alias="attendedRegistrationIds")
    force: bool = Field(False, alias="force")  # complete even before the scheduled start
    recording_url: Url | None = Field(None, alias="recordingUrl")
    slides_url: Url | None = Field(None, alias="slidesUrl")


class Reschedule(EventData):
    """Moves the event's start; its pre-event steps are planned again."""

    NAME = "event.rescheduled"

    event_id: Id = Field(alias="eventId")
    scheduled_at: Moment = Field(alias="scheduledAt")


class EventCancellation(EventData):
    """Cancels the event and every open step of its registrations."""

    NAME = "event.cancelled"

    event_id: Id = Field(alias="eventId")


class RegistrationCancellation(EventData):
    """Cancels one registration and its open steps."""

    NAME = "registration.cancelled"

    registration_id: Id = Field(alias="registrationId")


def _template_errors() -> tuple[type[Exception], ...]:
    # drip.engine.direct.check_template raises FieldError; older versions raised their own
    # DirectSendError (with the same `field`): accept both while that change lands.
    legacy = getattr(direct, "DirectSendError", None)
    return (FieldError, legacy) if isinstance(legacy, type) and issubclass(legacy, Exception) else (FieldError,)


class DirectSend(EventData):
    """Sends one message outside any funnel."""

    NAME = "message.send"

    channel: Channel = Field(alias="channel")
    template_type: TemplateType = Field(alias="templateType")
    contact_id: Id = Field(alias="contactId")
    registration_id: Id | None = Field(None, alias="registrationId")
    step_type: StepType = Field("", alias="stepType")
    idempotency_key: Id | None = Field(None, alias="idempotencyKey")

    @field_validator("template_type")
    @classmethod
    def _template_exists(cls, template_type: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is None:  # channel was refused itself, and its error comes first
            return template_type
        try:
            direct.check_template(template_type, channel)
        except _template_errors() as exc:
            # check_template names the culprit ("channel" or "templateType"); `field` moves the
            # error there (see drip.doors.intake.errors), whichever field's validator found it.
            raise refuse("template", "{reason}", reason=str(exc), field=getattr(exc, "field", None)) from None
        return template_type


EVENTS: dict[str, type[EventData]] = {
    model.NAME: model for model in (Enrollment, Completion, Reschedule, EventCancellation, RegistrationCancellation, DirectSend)
}


def _known_event(name: str) -> str:
    if name not in EVENTS:
        raise refuse("event_name", "unknown event name {shown}; known: {known}", shown=shown(name), known=", ".join(EVENTS))
    return name


class Envelope(BaseModel):
    """One event as sent: its name, checked first, and its data, validated next by the model
    for that name (not as a tagged union, which would put the tag into every error's path)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    name: Annotated[str, AfterValidator(_known_event)]
    data: dict[str, Any]
