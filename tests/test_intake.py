"""drip.intake, the parsing stage of the event API: JSON in, strict pydantic models out, or a
FieldError naming the field by its JSON path. No database: these are pure parsing tests."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drip.doors.intake import (
    EVENTS,
    MAX_EVENTS,
    Completion,
    DirectSend,
    Enrollment,
    EventCancellation,
    ParsedEvent,
    RegistrationCancellation,
    Reschedule,
    field_error,
    json_schema,
    parse_events,
    parse_json,
)
from drip.doors.intake.errors import json_path
from drip.support.errors import FieldError

START = "2030-12-01T15:00:00-05:00"
DONE = "2026-01-01T00:00:00Z"
VALID: dict[str, dict[str, Any]] = {
    "event.enrolled": {
        "contactId": "c-ada", "eventId": "e-webinar", "registrationId": "r-ada", "eventTitle": "Launch webinar",
        "scheduledAt": START, "contactEmail": "ada@example.com", "contactPhone": "+14155550101", "firstName": "Ada",
        "lastName": "Lovelace", "timezone": "Europe/London", "joinUrl": "https://example.com/join/1",
        "emailConsent": True, "smsConsent": False,
    },
    "event.completed": {"eventId": "e1", "completedAt": DONE},
    "event.rescheduled": {"eventId": "e1", "scheduledAt": START},
    "event.cancelled": {"eventId": "e1"},
    "registration.cancelled": {"registrationId": "r1"},
    "message.send": {"contactId": "c1", "templateType": "reminder_1h", "channel": "sms"},
}


def body(name: str, **data: Any) -> dict[str, Any]:
    """A valid event of `name`, with `data` overriding its fields (... removes one)."""
    merged = {**VALID[name], **data}
    return {"name": name, "data": {k: v for k, v in merged.items() if v is not ...}}


def parse_one(name: str, **data: Any) -> Any:
    [event] = parse_events(body(name, **data))
    return event.data


def refusal(payload: Any) -> tuple[str, str | None]:
    with pytest.raises(FieldError) as info:
        parse_events(payload)
    return str(info.value), info.value.field


def refused(name: str, **data: Any) -> tuple[str, str | None]:
    return refusal(body(name, **data))


# --- valid events: the models and their values ---------------------------------------------


def test_an_enrollment_parses_into_snake_case_attributes_with_times_in_utc():
    [event] = parse_events(body("event.enrolled"))
    assert (event.name, event.at, event.path("scheduledAt")) == ("event.enrolled", "data.", "data.scheduledAt")
    e = event.data
    assert isinstance(e, Enrollment)
    assert (e.contact_id, e.event_id, e.registration_id, e.event_title) == ("c-ada", "e-webinar", "r-ada", "Launch webinar")
    assert e.scheduled_at == datetime(2030, 12, 1, 20, 0, tzinfo=UTC) and e.scheduled_at.utcoffset() == timedelta(0)
    assert (e.contact_email, e.contact_phone, e.first_name, e.last_name) == (
        "ada@example.com", "+14155550101", "Ada", "Lovelace")
    assert (e.timezone, e.join_url, e.email_consent, e.sms_consent) == (
        "Europe/London", "https://example.com/join/1", True, False)


@pytest.mark.parametrize("name,model", [
    ("event.enrolled", Enrollment), ("event.completed", Completion), ("event.rescheduled", Reschedule),
    ("event.cancelled", EventCancellation), ("registration.cancelled", RegistrationCancellation),
    ("message.send", DirectSend),
])
def test_every_event_name_has_its_model(name, model):
    assert EVENTS[name] is model
    assert isinstance(parse_one(name), model)


def test_the_json_names_are_camel_case_aliases_of_the_attributes():
    def camel(attribute: str) -> str:
        head, *rest = attribute.split("_")
        return head + "".join(word.title() for word in rest)

    for model in EVENTS.values():
        assert all(info.alias == camel(attribute) for attribute, info in model.model_fields.items()), model


def test_optional_fields_default_when_absent():
    e = parse_one("event.enrolled", contactPhone=..., firstName=..., lastName=..., timezone=..., joinUrl=...,
                  emailConsent=..., smsConsent=...)
    assert (e.contact_phone, e.first_name, e.last_name, e.timezone, e.join_url, e.email_consent, e.sms_consent) == (
        None,) * 7
    c = parse_one("event.completed")
    assert (c.event_title, c.attended_registration_ids, c.force, c.recording_url, c.slides_url) == (
        None, [], False, None, None)
    d = parse_one("message.send")
    assert (d.registration_id, d.step_type, d.idempotency_key) == (None, "", None)


def test_a_completion_reads_attendance_force_and_the_follow_up_urls():
    c = parse_one("event.completed", eventTitle="Webinar", attendedRegistrationIds=["r1", "r2"], force=True,
                  recordingUrl="https://example.com/rec", slidesUrl="http://example.com/slides.pdf")
    assert c.completed_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert (c.event_id, c.event_title, c.attended_registration_ids, c.force) == ("e1", "Webinar", ["r1", "r2"], True)
    assert (c.recording_url, c.slides_url) == ("https://example.com/rec", "http://example.com/slides.pdf")


def test_a_direct_send_reads_every_field():
    d = parse_one("message.send", registrationId="r1", stepType="manual-nudge", idempotencyKey="nudge-1")
    assert (d.contact_id, d.registration_id, d.template_type, d.channel, d.step_type, d.idempotency_key) == (
        "c1", "r1", "reminder_1h", "sms", "manual-nudge", "nudge-1")


def test_the_other_events_read_their_ids():
    assert parse_one("event.rescheduled").scheduled_at == datetime(2030, 12, 1, 20, 0, tzinfo=UTC)
    assert parse_one("event.cancelled").event_id == "e1"
    assert parse_one("registration.cancelled").registration_id == "r1"


def test_unknown_keys_and_snake_case_keys_are_ignored():
    e = parse_one("event.enrolled", contact_id="other", source="crm", firstName=...)
    assert (e.contact_id, e.first_name) == ("c-ada", None)
    assert not hasattr(e, "source")


def test_parsed_models_are_frozen():
    e = parse_one("event.cancelled")
    with pytest.raises(ValidationError):
        e.event_id = "other"


def test_a_parsed_event_knows_where_its_data_sits():
    event = ParsedEvent("event.cancelled", "[2].data.", parse_one("event.cancelled"))
    assert event.path("eventId") == "[2].data.eventId"


# --- null ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,field", [
    ("event.enrolled", "contactId"), ("event.enrolled", "scheduledAt"), ("event.enrolled", "contactEmail"),
    ("event.completed", "completedAt"), ("event.completed", "eventId"), ("message.send", "channel"),
    ("message.send", "templateType"), ("registration.cancelled", "registrationId"),
])
@pytest.mark.parametrize("absent", [None, ...], ids=["null", "missing"])
def test_a_required_field_null_or_missing_is_required(name, field, absent):
    assert refused(name, **{field: absent}) == (f"{field} is required", f"data.{field}")


def test_null_for_an_optional_field_means_absent():
    e = parse_one("event.enrolled", contactPhone=None, timezone=None, joinUrl=None, smsConsent=None)
    assert (e.contact_phone, e.timezone, e.join_url, e.sms_consent) == (None, None, None, None)
    c = parse_one("event.completed", attendedRegistrationIds=None, force=None, eventTitle=None, slidesUrl=None)
    assert (c.attended_registration_ids, c.force, c.event_title, c.slides_url) == ([], False, None, None)
    assert parse_one("message.send", stepType=None, idempotencyKey=None).step_type == ""


def test_null_in_a_list_of_ids_is_a_missing_item():
    assert refused("event.completed", attendedRegistrationIds=["r1", None]) == (
        "attendedRegistrationIds[1] is required", "data.attendedRegistrationIds[1]")


# --- strict types ------------------------------------------------------------------------


@pytest.mark.parametrize("value,shown", [
    (42, "a number"), (1.5, "a number"), (True, "a boolean"), ([], "a list"), ({}, "an object"), (["c"], "a list"),
])
def test_an_id_must_be_a_string(value, shown):
    assert refused("event.enrolled", contactId=value) == (f"contactId must be a string, not {shown}", "data.contactId")


@pytest.mark.parametrize("value,shown", [("yes", "a string"), ("true", "a string"), (1, "a number"), (0, "a number"),
                                         ([], "a list")])
def test_a_flag_must_be_a_boolean(value, shown):
    assert refused("event.enrolled", smsConsent=value) == (
        f"smsConsent must be true or false, not {shown}", "data.smsConsent")
    assert refused("event.completed", force=value) == (f"force must be true or false, not {shown}", "data.force")


@pytest.mark.parametrize("value,shown", [("r1", "a string"), ({"r1": True}, "an object"), (3, "a number")])
def test_attendance_must_be_a_list(value, shown):
    assert refused("event.completed", attendedRegistrationIds=value) == (
        f"attendedRegistrationIds must be a list of ids, not {shown}", "data.attendedRegistrationIds")


def test_an_item_of_a_list_is_named_by_its_index():
    assert refused("event.completed", attendedRegistrationIds=["r1", 7]) == (
        "attendedRegistrationIds[1] must be a string, not a number", "data.attendedRegistrationIds[1]")
    assert refused("event.completed", attendedRegistrationIds=["r1", "r2", " "]) == (
        "attendedRegistrationIds[2] must not be empty", "data.attendedRegistrationIds[2]")


def test_a_time_must_be_a_string():
    assert refused("event.rescheduled", scheduledAt=20301201) == (
        "scheduledAt must be a string, not a number", "data.scheduledAt")


# --- text: blank, length, NUL, surrogates ------------------------------------------------------


@pytest.mark.parametrize("name,field,limit", [
    ("event.enrolled", "contactId", 200), ("event.enrolled", "eventId", 200), ("event.enrolled", "registrationId", 200),
    ("event.enrolled", "eventTitle", 300), ("event.completed", "eventTitle", 300), ("event.enrolled", "firstName", 200),
    ("event.enrolled", "lastName", 200), ("event.enrolled", "contactEmail", 254), ("event.enrolled", "contactPhone", 32),
    ("event.enrolled", "timezone", 64), ("event.enrolled", "scheduledAt", 64), ("event.completed", "completedAt", 64),
    ("event.enrolled", "joinUrl", 500), ("event.completed", "recordingUrl", 500), ("event.completed", "slidesUrl", 500),
    ("message.send", "templateType", 60), ("message.send", "stepType", 60), ("message.send", "channel", 20),
    ("message.send", "idempotencyKey", 200), ("message.send", "registrationId", 200),
])
def test_each_text_field_has_its_length_limit(name, field, limit):
    assert refused(name, **{field: "x" * (limit + 1)}) == (f"{field} is longer than {limit} characters", f"data.{field}")


def test_a_text_of_exactly_the_limit_is_accepted():
    assert parse_one("event.enrolled", contactId="x" * 200, eventTitle="t" * 300).contact_id == "x" * 200


@pytest.mark.parametrize("name,field", [
    ("event.enrolled", "contactId"), ("event.enrolled", "eventTitle"), ("event.enrolled", "contactEmail"),
    ("event.enrolled", "timezone"), ("event.enrolled", "scheduledAt"), ("event.completed", "eventTitle"),
    ("message.send", "channel"), ("message.send", "templateType"), ("message.send", "idempotencyKey"),
])
@pytest.mark.parametrize("blank", ["", "  ", "\t\n"])
def test_blank_text_is_refused_where_a_value_is_needed(name, field, blank):
    assert refused(name, **{field: blank}) == (f"{field} must not be empty", f"data.{field}")


def test_blank_is_accepted_where_it_means_nothing():
    e = parse_one("event.enrolled", firstName="", lastName=" ", joinUrl="", contactPhone="  ")
    assert (e.first_name, e.last_name, e.join_url, e.contact_phone) == ("", " ", "", "")
    assert parse_one("message.send", stepType="").step_type == ""
    assert parse_one("event.completed", recordingUrl="", slidesUrl="").recording_url == ""


def test_nul_characters_and_unpaired_surrogates_are_refused():
    assert refused("event.enrolled", firstName="Ada\x00") == ("firstName must not contain NUL characters", "data.firstName")
    assert refused("event.enrolled", lastName="\ud800") == (
        "lastName is not valid Unicode (unpaired surrogate)", "data.lastName")
    assert refused("event.enrolled", contactPhone="+1\udfff") == (
        "contactPhone is not valid Unicode (unpaired surrogate)", "data.contactPhone")


def test_the_checks_of_a_text_come_in_order_blank_length_nul_surrogate():
    assert refused("event.enrolled", contactId=" " * 201)[0] == "contactId must not be empty"
    assert refused("event.enrolled", contactId="\x00" * 201)[0] == "contactId is longer than 200 characters"
    assert refused("event.enrolled", lastName="\ud800" * 201)[0] == "lastName is longer than 200 characters"
    assert refused("event.enrolled", lastName="\x00\ud800")[0] == "lastName must not contain NUL characters"


def test_a_surrogate_in_json_escapes_is_refused_too():
    raw = '{"name": "event.cancelled", "data": {"eventId": "e\\ud800"}}'
    assert refusal(parse_json(raw)) == ("eventId is not valid Unicode (unpaired surrogate)", "data.eventId")


# --- times -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    ("2030-12-01T20:00:00Z", datetime(2030, 12, 1, 20, tzinfo=UTC)),
    ("2030-12-01T15:00:00-05:00", datetime(2030, 12, 1, 20, tzinfo=UTC)),
    ("2030-12-01T21:30:00+01:30", datetime(2030, 12, 1, 20, tzinfo=UTC)),
    (" 2030-12-01T20:00:00.250+00:00 ", datetime(2030, 12, 1, 20, 0, 0, 250000, tzinfo=UTC)),
    ("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC)),
    ("2999-12-31T00:00:00Z", datetime(2999, 12, 31, tzinfo=UTC)),
])
def test_a_time_with_an_offset_is_converted_to_utc(value, expected):
    parsed = parse_one("event.rescheduled", scheduledAt=value).scheduled_at
    assert parsed == expected and parsed.tzinfo == UTC


def test_a_time_without_an_offset_is_ambiguous():
    assert refused("event.enrolled", scheduledAt="2030-12-01T15:00:00") == (
        "scheduledAt has no UTC offset: '2030-12-01T15:00:00' is ambiguous; add Z or +HH:MM "
        "(e.g. 2026-12-01T15:00:00-05:00 or 2026-12-01T20:00:00Z)", "data.scheduledAt")
    assert "has no UTC offset: '2030-12-01'" in refused("event.enrolled", scheduledAt="2030-12-01")[0]


@pytest.mark.parametrize("value", ["next tuesday", "2030-13-01T00:00:00Z", "2030-12-01T25:00:00Z", "12/01/2030"])
def test_a_time_that_is_not_iso_8601_is_refused(value):
    assert refused("event.enrolled", scheduledAt=value) == (
        "scheduledAt must be an ISO 8601 date-time with an offset (e.g. 2026-12-01T15:00:00-05:00 or "
        f"2026-12-01T20:00:00Z), not {value!r}", "data.scheduledAt")


@pytest.mark.parametrize("value", ["1969-12-31T23:59:59Z", "9999-12-31T23:00:00+00:00", "0001-01-01T00:00:00+01:00",
                                   "2999-12-31T00:00:01Z"])
def test_a_time_outside_1970_to_2999_is_refused(value):
    assert refused("event.enrolled", scheduledAt=value) == (
        f"scheduledAt must be between 1970 and 2999, not {value!r}", "data.scheduledAt")


def test_a_long_value_is_shown_cut_short():
    message, _ = refused("event.enrolled", scheduledAt="y" * 64)
    assert message.endswith(f"not {'y' * 60 + '…'!r}")


def test_a_completion_may_be_a_little_but_not_far_in_the_future():
    soon = (timezone.now() + timedelta(minutes=4)).isoformat()
    assert parse_one("event.completed", completedAt=soon).completed_at > timezone.now()
    message, field = refused("event.completed", completedAt="2999-01-01T00:00:00Z")
    assert (message, field) == ("completedAt is in the future (2999-01-01T00:00:00+00:00)", "data.completedAt")
    later = (timezone.now() + timedelta(minutes=10)).isoformat()
    assert refused("event.completed", completedAt=later)[0].startswith("completedAt is in the future")


def test_a_completion_checks_its_time_before_its_event_id():
    assert refused("event.completed", eventId=..., completedAt="2999-01-01T00:00:00Z")[1] == "data.completedAt"


# --- emails, phones, zones, URLs ----------------------------------------------------------


def test_an_email_is_stripped_and_validated():
    assert parse_one("event.enrolled", contactEmail="  ada@example.com ").contact_email == "ada@example.com"
    assert refused("event.enrolled", contactEmail="ada@") == (
        "contactEmail is not a valid email address: 'ada@'", "data.contactEmail")


@pytest.mark.parametrize("value,expected", [("+14155550101", "+14155550101"), ("+1 415 555 0199", "+14155550199"),
                                            (" +44 20 7946 0958 ", "+442079460958"), ("", ""), ("   ", "")])
def test_a_phone_is_normalised_to_e164(value, expected):
    assert parse_one("event.enrolled", contactPhone=value).contact_phone == expected


def test_a_phone_must_be_e164():
    assert refused("event.enrolled", contactPhone="415 555 0101") == (
        "contactPhone must be in E.164 format, + and the country code (e.g. +14155550123), not '415 555 0101'",
        "data.contactPhone")
    assert refused("event.enrolled", contactPhone="+1 555") == (
        "contactPhone: +1 555 is not a valid phone number.", "data.contactPhone")
    assert refused("event.enrolled", contactPhone="+") == (
        "contactPhone: + is not a phone number in international format (E.164, e.g. +14155550123).",
        "data.contactPhone")


def test_a_time_zone_must_be_iana():
    assert parse_one("event.enrolled", timezone="America/New_York").timezone == "America/New_York"
    assert refused("event.enrolled", timezone="Mars/Olympus") == (
        "timezone: Mars/Olympus is not a known IANA time zone (e.g. America/New_York, Europe/Paris, UTC).",
        "data.timezone")


@pytest.mark.parametrize("name,field", [("event.enrolled", "joinUrl"), ("event.completed", "recordingUrl"),
                                        ("event.completed", "slidesUrl")])
@pytest.mark.parametrize("value", ["javascript:alert(1)", "ftp://example.com/x", "example.com", " "])
def test_a_url_must_be_http_or_https(name, field, value):
    assert refused(name, **{field: value}) == (f"{field} must be an http(s) URL, not {value!r}", f"data.{field}")


# --- message.send: its template -------------------------------------------------------------


def test_a_send_needs_a_known_channel_and_template():
    assert refused("message.send", channel="fax") == ("channel must be one of email, sms, not 'fax'", "data.channel")
    message, field = refused("message.send", templateType="nope", channel="email")
    assert field == "data.templateType" and message.startswith("unknown template type 'nope'; known: ")
    assert refused("message.send", templateType="welcome", channel="sms") == (
        "template type 'welcome' has no sms template (sms.txt)", "data.templateType")


def test_a_send_checks_channel_and_template_before_the_contact():
    assert refused("message.send", contactId=..., channel="fax")[1] == "data.channel"
    assert refused("message.send", contactId=..., channel="") == ("channel must not be empty", "data.channel")
    assert refused("message.send", contactId=...) == ("contactId is required", "data.contactId")


def test_a_template_error_in_a_list_is_placed_under_the_event():
    batch = [body("event.cancelled"), body("message.send", channel="fax")]
    assert refusal(batch) == ("channel must be one of email, sms, not 'fax'", "[1].data.channel")


# --- the envelope and the body ------------------------------------------------------------


@pytest.mark.parametrize("payload,expected", [
    (42, ('the body must be an event {"name": ..., "data": {...}} or a list of them, not a number', None)),
    ("x", ('the body must be an event {"name": ..., "data": {...}} or a list of them, not a string', None)),
    (None, ('the body must be an event {"name": ..., "data": {...}} or a list of them, not null', None)),
    ({"data": {}}, ("name is required", "name")),
    ({"name": None, "data": {}}, ("name is required", "name")),
    ({"name": 7, "data": {}}, ("name must be a string, not a number", "name")),
    ({"name": "event.cancelled"}, ("data is required", "data")),
    ({"name": "event.cancelled", "data": None}, ("data is required", "data")),
    ({"name": "event.cancelled", "data": []}, ("data must be an object, not a list", "data")),
    ({"name": "event.cancelled", "data": "e1"}, ("data must be an object, not a string", "data")),
])
def test_the_envelope_is_checked_first(payload, expected):
    assert refusal(payload) == expected


def test_an_unknown_event_name_lists_the_known_ones():
    assert refusal({"name": "event.deleted", "data": {}}) == (
        "unknown event name 'event.deleted'; known: event.enrolled, event.completed, event.rescheduled, "
        "event.cancelled, registration.cancelled, message.send", "name")


def test_the_name_is_checked_before_the_data():
    assert refusal({"name": "event.deleted", "data": []})[1] == "name"


def test_errors_in_a_list_are_placed_under_the_events_index():
    batch = [body("event.enrolled"), body("event.cancelled"), body("event.enrolled", scheduledAt="2030-12-01 15:00")]
    assert refusal(batch)[1] == "[2].data.scheduledAt"
    assert refusal([body("event.cancelled"), {"data": {}}]) == ("name is required", "[1].name")
    assert refusal([body("event.cancelled"), {"name": "event.cancelled", "data": 3}]) == (
        "data must be an object, not a number", "[1].data")


def test_an_item_of_a_list_that_is_not_an_object_is_named_by_its_index():
    assert refusal([body("event.cancelled"), 3]) == (
        'an event must be an object {"name": ..., "data": {...}}, not a number', "[1]")
    assert refusal([[]]) == ('an event must be an object {"name": ..., "data": {...}}, not a list', "[0]")


def test_the_first_bad_event_of_a_list_is_answered():
    assert refusal([body("event.cancelled", eventId=1), body("event.cancelled", eventId=2)])[1] == "[0].data.eventId"


def test_a_list_parses_in_order_with_each_events_place():
    events = parse_events([body("event.enrolled"), body("registration.cancelled")])
    assert [(e.name, e.at) for e in events] == [("event.enrolled", "[0].data."), ("registration.cancelled", "[1].data.")]
    assert events[1].path("registrationId") == "[1].data.registrationId"


def test_a_list_holds_at_most_max_events():
    assert MAX_EVENTS == 1000
    assert len(parse_events([body("event.cancelled")] * MAX_EVENTS)) == MAX_EVENTS
    assert refusal([body("event.cancelled")] * (MAX_EVENTS + 1)) == ("at most 1000 events per request, got 1001", None)
    assert parse_events([]) == []


# --- parse_json -----------------------------------------------------------------------------


def test_parse_json_reads_str_and_bytes():
    assert parse_json('{"a": [1]}') == parse_json(b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize("raw", ['{"name": "event.enrolled",', b"\xff\xfe\x00garbage", "", "[" * 100_000, "1" * 5000])
def test_malformed_json_names_no_field(raw):
    with pytest.raises(FieldError) as info:
        parse_json(raw)
    assert str(info.value).startswith("malformed JSON: ") and info.value.field is None


# --- the error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize("loc,path", [
    ((), ""), (("contactId",), "contactId"), (("attendedRegistrationIds", 1), "attendedRegistrationIds[1]"),
    ((2, "data", "scheduledAt"), "[2].data.scheduledAt"),
])
def test_json_path(loc, path):
    assert json_path(loc) == path


def test_field_error_places_the_first_error_under_a_prefix():
    with pytest.raises(ValidationError) as info:
        Reschedule.model_validate({"eventId": 1, "scheduledAt": 2})
    error = field_error(info.value, "[3].data.")
    assert (str(error), error.field) == ("eventId must be a string, not a number", "[3].data.eventId")
    assert field_error(info.value).field == "eventId"


# --- the JSON Schema --------------------------------------------------------------------------


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema["$defs"][ref.removeprefix("#/$defs/")] if ref else node


def _event_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    [one, many] = schema["anyOf"]
    assert many["type"] == "array" and many["maxItems"] == MAX_EVENTS
    assert many["items"] == one  # a list holds the same events
    return [_resolve(schema, option) for option in one["oneOf"]]


def test_the_schema_is_json_and_every_ref_resolves():
    schema = json_schema()
    text = json.dumps(schema)
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/$defs/')[1:]}
    assert refs and refs <= set(schema["$defs"])


def test_the_schema_names_every_event_as_a_constant():
    schema = json_schema()
    events = _event_schemas(schema)
    names = [e["properties"]["name"]["const"] for e in events]
    assert sorted(names) == sorted(EVENTS)
    assert all(e["required"] == ["name", "data"] and e["type"] == "object" for e in events)
    [one, _] = schema["anyOf"]
    assert one["discriminator"]["propertyName"] == "name"


def test_the_schema_describes_each_events_data_by_its_json_names():
    schema = json_schema()
    data = {e["properties"]["name"]["const"]: _resolve(schema, e["properties"]["data"]) for e in _event_schemas(schema)}
    enrolled = data["event.enrolled"]
    assert enrolled["required"] == ["contactId", "eventId", "registrationId", "eventTitle", "scheduledAt", "contactEmail"]
    props = enrolled["properties"]
    assert props["contactId"] == {"type": "string", "maxLength": 200, "pattern": r"\S", "title": "contactId"}
    assert props["scheduledAt"]["format"] == "date-time" and props["scheduledAt"]["maxLength"] == 64
    assert {"type": "boolean"} in props["smsConsent"]["anyOf"]
    completed = data["event.completed"]["properties"]
    assert {"force", "recordingUrl", "slidesUrl", "attendedRegistrationIds"} <= set(completed)
    assert completed["attendedRegistrationIds"]["items"]["type"] == "string"
    assert completed["force"]["type"] == "boolean"
    assert data["message.send"]["required"] == ["channel", "templateType", "contactId"]
    for model_schema in data.values():
        assert all(key[0].islower() and "_" not in key for key in model_schema["properties"])


def test_every_example_event_satisfies_the_schemas_structure():
    """No jsonschema in the venv: check what a validator would, for the valid examples."""
    schema = json_schema()
    data = {e["properties"]["name"]["const"]: _resolve(schema, e["properties"]["data"]) for e in _event_schemas(schema)}
    type_of = {"string": str, "boolean": bool, "array": list}
    for name, example in VALID.items():
        model_schema = data[name]
        assert set(model_schema["required"]) <= set(example)
        for key, value in example.items():
            prop = model_schema["properties"][key]
            options = prop.get("anyOf", [prop])
            assert any(isinstance(value, type_of[o["type"]]) for o in options if o["type"] != "null"), (name, key)


# --- arbitrary JSON: a FieldError or events, nothing else -------------------------------------------

LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
ANY_JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                        max_leaves=10)
FIELDS = sorted({key for example in VALID.values() for key in example} | {"attendedRegistrationIds", "force", "stepType"})
MUTATED = st.builds(
    lambda name, changes: body(name, **changes),
    st.sampled_from(sorted(VALID)), st.dictionaries(st.sampled_from(FIELDS), ANY_JSON | st.just(...), max_size=3),
)


@hypothesis_settings(max_examples=300, deadline=None, database=None)
@given(payload=MUTATED | st.lists(MUTATED, max_size=3) | ANY_JSON)
def test_arbitrary_json_is_parsed_or_refused_with_a_field_error(payload):
    try:
        events = parse_events(json.loads(json.dumps(payload)))
    except FieldError as exc:
        assert str(exc)
        assert exc.field is None or isinstance(exc.field, str)
        if isinstance(payload, dict) and exc.field and "." in exc.field:
            assert exc.field.startswith("data.")
    else:
        assert all(isinstance(e.data, EVENTS[e.name]) for e in events)
