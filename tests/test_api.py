"""POST /api/events through Django's test client: every event name, every class of bad input
(status, message, field, and that nothing was written), the all-or-nothing batch, idempotent
enrollment, authentication, the size limit, and arbitrary JSON that must never be a 5xx."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import event as hypothesis_event
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from drip.domain.consent import has_consent, record_consent
from drip.models import Channel, ConsentRecord, Contact, Event, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event
from tests.helpers import API_TOKEN, flush_broker

TOKEN = API_TOKEN
IN_TWO_DAYS = (timezone.now() + timedelta(days=2)).replace(microsecond=0)


def enrolled(**overrides: Any) -> dict[str, Any]:
    data = {
        "contactId": "c-ada", "eventId": "e-webinar", "registrationId": "r-ada", "eventTitle": "Launch webinar",
        "scheduledAt": IN_TWO_DAYS.isoformat(), "contactEmail": "ada@example.com", "contactPhone": "+14155550101",
        "firstName": "Ada", "lastName": "Lovelace", "timezone": "Europe/London",
        "joinUrl": "https://example.com/join/1", "emailConsent": True, "smsConsent": True,
    }
    data.update(overrides)
    return {"name": "event.enrolled", "data": {k: v for k, v in data.items() if v is not ...}}


def event(name: str, **data: Any) -> dict[str, Any]:
    return {"name": name, "data": data}


def rows() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in (Contact, ConsentRecord, Event, Registration, Step, Message)}


# --- every event name -----------------------------------------------------------------


def test_it_enrolls_a_new_contact_and_starts_the_pre_event_funnel(api):
    response = api(enrolled())
    assert response.status_code == 202, response.json()
    result = response.json()["results"][0]
    assert response.json()["accepted"] == 1
    assert result == {
        "name": "event.enrolled", "contactId": "c-ada", "eventId": "e-webinar", "registrationId": "r-ada",
        "contact": "created", "event": "created", "registration": "created", "eventStatus": "scheduled",
        "registrationStatus": "active", "stepsPlanned": 3, "consent": {"email": True, "sms": True},
    }
    contact = Contact.objects.get(external_id="c-ada")
    assert (contact.email, contact.phone, contact.first_name, contact.timezone) == (
        "ada@example.com", "+14155550101", "Ada", "Europe/London")
    registration = Registration.objects.get(external_id="r-ada")
    assert registration.event.starts_at == IN_TWO_DAYS and registration.event.title == "Launch webinar"
    assert sorted(registration.steps.values_list("key", flat=True)) == ["reminder_1h", "reminder_24h", "welcome"]
    assert {(r.source, r.detail) for r in contact.consents.all()} == {("api", "api:event.enrolled")}


def test_the_same_enrollment_twice_enrolls_once(api):
    first = api(enrolled()).json()["results"][0]
    second = api(enrolled())
    assert second.status_code == 202
    again = second.json()["results"][0]
    assert (again["contact"], again["event"], again["registration"], again["stepsPlanned"]) == (
        "matched", "matched", "matched", 0)
    assert first["registrationId"] == again["registrationId"]
    assert Registration.objects.count() == 1 and Step.objects.count() == 3
    assert ConsentRecord.objects.count() == 2  # the same consent is not recorded twice


def test_the_same_enrollment_at_the_same_moment_enrolls_once(transactional_db, settings):
    """Two producers (or one retrying) race: both get a 202, one registration exists."""
    settings.DRIP_API_TOKEN = TOKEN
    start = threading.Barrier(4)
    statuses: list[int] = []

    def post() -> None:
        try:
            start.wait()
            statuses.append(Client().post("/api/events", data=json.dumps(enrolled()), content_type="application/json",
                                          headers={"Authorization": f"Bearer {TOKEN}"}).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        flush_broker()  # the welcome task nobody consumes here
    assert statuses == [202] * 4
    assert (Contact.objects.count(), Registration.objects.count(), Step.objects.count()) == (1, 1, 3)


def test_an_enrollment_with_a_new_start_reschedules_the_event(api):
    api(enrolled())
    later = IN_TWO_DAYS + timedelta(days=1)
    result = api(enrolled(registrationId="r-grace", contactId="c-grace", contactEmail="grace@example.com",
                          scheduledAt=later.isoformat())).json()["results"][0]
    assert result["event"] == "rescheduled"
    assert (result["remindersMoved"], result["noticesQueued"]) == (3, 1)  # ada's; grace enrolls after the move
    assert Event.objects.get().starts_at == later
    ada_steps = Step.objects.filter(registration__external_id="r-ada", key="reminder_1h")
    assert {(s.plan_version, s.status) for s in ada_steps} == {(1, "cancelled"), (2, "pending")}
    assert ada_steps.get(plan_version=2).due_at == later - timedelta(hours=1)


def test_it_normalises_the_phone_and_updates_a_known_contact(api):
    api(enrolled())
    result = api(enrolled(contactPhone="+1 415 555 0199", firstName="Augusta")).json()["results"][0]
    assert result["contact"] == "updated"
    contact = Contact.objects.get()
    assert (contact.phone, contact.first_name, contact.last_name) == ("+14155550199", "Augusta", "Lovelace")


def test_an_empty_phone_means_the_contact_has_none(api):
    api(enrolled())
    api(enrolled(contactPhone=""))
    assert Contact.objects.get().phone == ""


def test_enrolling_in_a_cancelled_event_records_it_and_plans_nothing(api):
    make_event(external_id="e-webinar", starts_at=IN_TWO_DAYS, status="cancelled")
    result = api(enrolled()).json()["results"][0]
    assert (result["registration"], result["eventStatus"], result["stepsPlanned"]) == ("created", "cancelled", 0)
    assert not Step.objects.exists()


def test_a_consent_grant_never_lifts_a_recipients_stop(api):
    contact = make_contact(external_id="c-ada", sms_consent=False, phone="+14155550101")  # the number enrolled() sends
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    result = api(enrolled()).json()["results"][0]
    assert result["consent"] == {"email": True, "sms": False}
    assert result["consentRefused"] == {"sms": "suppressed by the recipient (twilio:STOP)"}
    assert not has_consent(contact, Channel.SMS)


def test_a_revocation_in_an_enrollment_is_recorded(api):
    api(enrolled())
    result = api(enrolled(smsConsent=False)).json()["results"][0]
    assert result["consent"] == {"email": True, "sms": False}
    latest = ConsentRecord.objects.filter(channel="sms").first()
    assert (latest.granted, latest.source) == (False, "api")


def test_event_completed_starts_the_post_event_funnel_once(api):
    ev = make_event(external_id="e1", starts_in=-7200)
    came, missed = enroll(make_contact(), ev), enroll(make_contact(), ev)
    done_at = (timezone.now() - timedelta(minutes=5)).replace(microsecond=0)
    body = event("event.completed", eventId="e1", completedAt=done_at.isoformat(), attendedRegistrationIds=[came.external_id])
    response = api(body)
    assert response.status_code == 202, response.json()
    result = response.json()["results"][0]
    assert (result["alreadyCompleted"], result["branches"], result["stepsPlanned"]) == (
        False, {"attended": 1, "no_show": 1}, 6)
    ev.refresh_from_db()
    assert (ev.status, ev.completed_at) == ("completed", done_at)
    assert Registration.objects.get(pk=came.pk).attended is True
    assert set(Step.objects.filter(registration=missed).values_list("key", flat=True)) == {
        "sorry_missed", "reengagement", "final_followup"}
    steps = Step.objects.count()

    again = api(body).json()["results"][0]
    assert again["alreadyCompleted"] is True and again["stepsPlanned"] == 0
    assert Step.objects.count() == steps


def test_event_rescheduled_replans_the_reminders(api):
    api(enrolled())
    later = IN_TWO_DAYS + timedelta(hours=5)
    result = api(event("event.rescheduled", eventId="e-webinar", scheduledAt=later.isoformat())).json()["results"][0]
    assert result == {"name": "event.rescheduled", "eventId": "e-webinar", "scheduledAt": later.isoformat(),
                      "rescheduled": True, "openPreEventSteps": 3, "remindersMoved": 3, "noticesQueued": 1}
    assert set(Step.objects.filter(plan_version=2).values_list("anchor_at", flat=True)) == {later}


def test_event_cancelled_cancels_its_steps(api):
    api(enrolled())
    Step.objects.filter(key="welcome").update(status="done")
    result = api(event("event.cancelled", eventId="e-webinar")).json()["results"][0]
    assert (result["alreadyCancelled"], result["stepsCancelled"]) == (False, 2)
    assert Event.objects.get().status == "cancelled"
    assert set(Step.objects.exclude(key="welcome").values_list("status", "reason")) == {("cancelled", "event cancelled")}
    assert api(event("event.cancelled", eventId="e-webinar")).json()["results"][0]["alreadyCancelled"] is True


def test_registration_cancelled_cancels_its_steps(api):
    api(enrolled())
    result = api(event("registration.cancelled", registrationId="r-ada")).json()["results"][0]
    assert (result["alreadyCancelled"], result["stepsCancelled"]) == (False, 3)
    registration = Registration.objects.get()
    assert registration.status == "cancelled" and registration.cancelled_at is not None
    assert set(Step.objects.values_list("status", flat=True)) == {"cancelled"}


def test_message_send_queues_a_direct_message_once_per_idempotency_key(api):
    api(enrolled())
    body = event("message.send", contactId="c-ada", registrationId="r-ada", templateType="reminder_1h",
                 channel="sms", stepType="manual-nudge", idempotencyKey="nudge-1")
    first = api(body).json()["results"][0]
    assert (first["created"], first["status"], first["channel"]) == (True, "queued", "sms")
    message = Message.objects.get(pk=first["messageId"])
    assert (message.step_id, message.step_type, message.to) == (None, "manual-nudge", "+14155550101")
    second = api(body).json()["results"][0]
    assert (second["messageId"], second["created"]) == (first["messageId"], False)
    assert Message.objects.count() == 1


def test_a_batch_may_refer_to_what_an_earlier_event_created(api):
    response = api([enrolled(), event("registration.cancelled", registrationId="r-ada")])
    assert response.status_code == 202
    assert [r["name"] for r in response.json()["results"]] == ["event.enrolled", "registration.cancelled"]
    assert Registration.objects.get().status == "cancelled"


# --- bad input: 400, the field named, nothing written ----------------------------------


@pytest.fixture
def world(db):
    """What the "unknown id" cases need to exist: one contact registered for one event."""
    contact = make_contact(external_id="c-known")
    ev = make_event(external_id="e-known", starts_in=-600)
    enroll(contact, ev)
    Registration.objects.filter(contact=contact).update(external_id="r-known")
    make_event(external_id="e-cancelled", status="cancelled")
    return contact


BAD = [
    # (what is wrong, body, field, words the message must contain)
    ("malformed JSON", '{"name": "event.enrolled",', None, "malformed JSON"),
    ("not an event", "42", None, "must be an event"),
    ("unknown event name", event("event.deleted", eventId="e-known"), "name", "unknown event name 'event.deleted'"),
    ("missing name", {"data": {}}, "name", "name is required"),
    ("data not an object", {"name": "event.cancelled", "data": []}, "data", "data must be an object, not a list"),
    ("missing field", enrolled(contactEmail=...), "data.contactEmail", "contactEmail is required"),
    ("mistyped id", enrolled(contactId=42), "data.contactId", "contactId must be a string, not a number"),
    ("mistyped flag", enrolled(smsConsent="yes"), "data.smsConsent", "smsConsent must be true or false"),
    ("empty id", enrolled(registrationId="  "), "data.registrationId", "must not be empty"),
    ("date without offset", enrolled(scheduledAt="2030-12-01T15:00:00"), "data.scheduledAt", "has no UTC offset"),
    ("not a date", enrolled(scheduledAt="next tuesday"), "data.scheduledAt", "ISO 8601"),
    ("date out of range", enrolled(scheduledAt="9999-12-31T23:00:00+00:00"), "data.scheduledAt", "between 1970 and 2999"),
    ("invalid email", enrolled(contactEmail="ada@"), "data.contactEmail", "not a valid email address"),
    ("phone not E.164", enrolled(contactPhone="415 555 0101"), "data.contactPhone", "E.164"),
    ("invalid phone", enrolled(contactPhone="+1 555"), "data.contactPhone", "not a valid phone number"),
    ("unknown zone", enrolled(timezone="Mars/Olympus"), "data.timezone", "not a known IANA time zone"),
    ("bad join URL", enrolled(joinUrl="javascript:alert(1)"), "data.joinUrl", "http(s) URL"),
    ("NUL in a string", enrolled(firstName="Ada\x00"), "data.firstName", "NUL"),
    ("unpaired surrogate", enrolled(lastName="\ud800"), "data.lastName", "not valid Unicode"),
    ("id too long", enrolled(contactId="x" * 201), "data.contactId", "longer than 200"),
    ("unknown channel", event("message.send", contactId="c-known", templateType="welcome", channel="fax"),
     "data.channel", "channel must be one of email, sms"),
    ("unknown template type", event("message.send", contactId="c-known", templateType="nope", channel="email"),
     "data.templateType", "unknown template type 'nope'"),
    ("unknown contact", event("message.send", contactId="c-nobody", templateType="welcome", channel="email"),
     "data.contactId", "unknown contact 'c-nobody'"),
    ("unknown registration for a send", event("message.send", contactId="c-known", registrationId="r-nobody",
                                              templateType="welcome", channel="email"),
     "data.registrationId", "unknown registration 'r-nobody'"),
    ("template needs an event", event("message.send", contactId="c-known", templateType="welcome", channel="email"),
     "data.registrationId", "needs an event"),
    ("unknown event to complete", event("event.completed", eventId="e-nobody", completedAt="2026-01-01T00:00:00Z"),
     "data.eventId", "unknown event 'e-nobody'"),
    ("completion in the future", event("event.completed", eventId="e-known", completedAt="2999-01-01T00:00:00Z"),
     "data.completedAt", "in the future"),
    ("unknown attendee", event("event.completed", eventId="e-known", completedAt="2026-01-01T00:00:00Z",
                               attendedRegistrationIds=["r-known", "r-nobody"]),
     "data.attendedRegistrationIds", "unknown registration id(s)"),
    ("mistyped attendee", event("event.completed", eventId="e-known", completedAt="2026-01-01T00:00:00Z",
                                attendedRegistrationIds=["r-known", 7]),
     "data.attendedRegistrationIds[1]", "must be a string"),
    ("completing a cancelled event", event("event.completed", eventId="e-cancelled", completedAt="2026-01-01T00:00:00Z"),
     "data.eventId", "is cancelled"),
    ("unknown event to reschedule", event("event.rescheduled", eventId="e-nobody", scheduledAt="2030-01-01T00:00:00Z"),
     "data.eventId", "unknown event"),
    ("rescheduling a cancelled event", event("event.rescheduled", eventId="e-cancelled", scheduledAt="2030-01-01T00:00:00Z"),
     "data.eventId", "can no longer be rescheduled"),
    ("unknown event to cancel", event("event.cancelled", eventId="e-nobody"), "data.eventId", "unknown event"),
    ("unknown registration to cancel", event("registration.cancelled", registrationId="r-nobody"),
     "data.registrationId", "unknown registration"),
    ("registration of another contact", enrolled(registrationId="r-known"), "data.registrationId",
     "belongs to another contact"),
    ("contact already registered under another id", enrolled(contactId="c-known", eventId="e-known",
                                                              registrationId="r-other"),
     "data.registrationId", "already registered for event 'e-known' as registration 'r-known'"),
]


@pytest.mark.parametrize("body,field,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api, world, body, field, words):
    before = rows()
    response = api(body)
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert words in response.json()["error"]
    assert rows() == before


def test_one_bad_event_rejects_the_whole_batch(api):
    batch = [enrolled(), enrolled(contactId="c-b", registrationId="r-b"), enrolled(scheduledAt="2030-12-01 15:00")]
    response = api(batch)
    assert response.status_code == 400
    assert response.json() == {"error": response.json()["error"], "field": "[2].data.scheduledAt"}
    assert rows() == dict.fromkeys(rows(), 0)


def test_an_unknown_id_late_in_a_batch_rolls_back_what_came_before(api):
    batch = [enrolled(), event("event.completed", eventId="e-nobody", completedAt="2026-01-01T00:00:00Z")]
    response = api(batch)
    assert (response.status_code, response.json()["field"]) == (400, "[1].data.eventId")
    assert rows() == dict.fromkeys(rows(), 0)


def test_an_empty_batch_is_accepted_and_does_nothing(api):
    response = api([])
    assert (response.status_code, response.json()) == (202, {"accepted": 0, "results": []})


# --- authentication, method, size ------------------------------------------------------


def test_it_answers_503_while_no_token_is_configured(api, settings):
    settings.DRIP_API_TOKEN = ""
    response = api(enrolled())
    assert response.status_code == 503 and "DRIP_API_TOKEN" in response.json()["error"]
    assert not Contact.objects.exists()


@pytest.mark.parametrize("token", [None, "", "wrong-token", TOKEN + "x", "tökén"])
def test_it_answers_401_without_the_right_token(api, token):
    response = api(enrolled(), token=token)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="drip"'
    assert not Contact.objects.exists()


def test_it_refuses_another_scheme_than_bearer(api, client):
    response = client.post("/api/events", data=json.dumps(enrolled()), content_type="application/json",
                           headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


def test_it_only_accepts_post(api, client):
    response = client.get("/api/events", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 405 and response["Allow"] == "POST"


def test_it_answers_413_over_one_megabyte(api):
    body = json.dumps([enrolled(firstName="x" * 150) for _ in range(4000)])
    assert len(body) > 1024 * 1024
    response = api(body)
    assert response.status_code == 413
    assert not Contact.objects.exists()


def test_the_trailing_slash_works_too(api):
    assert api(enrolled(), path="/api/events/").status_code == 202


def test_a_body_that_is_not_utf8_is_a_400(api):
    response = api(b"\xff\xfe\x00garbage")
    assert (response.status_code, response.json()["field"]) == (400, None)


# --- end to end: the welcome goes out through the real worker --------------------------


def test_an_enrollment_through_the_api_sends_the_welcome(worker, providers, client, settings):
    settings.DRIP_API_TOKEN = TOKEN
    response = client.post("/api/events", data=json.dumps(enrolled()), content_type="application/json",
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 202
    [welcome] = providers.wait_for(1, kind="email")
    assert welcome.to == "ada@example.com" and welcome.subject == "You're registered: Launch webinar"


# --- arbitrary JSON never gets a 5xx ---------------------------------------------------

FIELDS = [
    "contactId", "eventId", "registrationId", "eventTitle", "scheduledAt", "contactEmail", "contactPhone", "firstName",
    "lastName", "timezone", "joinUrl", "emailConsent", "smsConsent", "completedAt", "attendedRegistrationIds",
    "templateType", "channel", "stepType", "idempotencyKey",
]
PLAUSIBLE = st.sampled_from([
    "c1", "c2", "e1", "r1", "r2", "ada@example.com", "+14155550101", "+1 555", "2030-01-01T10:00:00Z",
    "2020-01-01T10:00:00+02:00", "2030-01-01T10:00:00", "UTC", "Europe/Paris", "email", "sms", "welcome",
    "reminder_1h", "https://example.com/j", True, False, ["r1"], ["r1", "r2"], "", " ", "\x00", "\ud800",
])
LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
ANY_JSON = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
VALUE = PLAUSIBLE | LEAF | ANY_JSON
EVENT_NAMES = st.sampled_from(
    ["event.enrolled", "event.completed", "event.rescheduled", "event.cancelled", "registration.cancelled", "message.send"]
)
EVENTS = st.fixed_dictionaries({
    "name": EVENT_NAMES | st.text(max_size=15),
    "data": st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=len(FIELDS)) | ANY_JSON,
})
# A valid enrollment with one field replaced: deep paths get exercised, not only the first check.
MUTATED = st.tuples(st.sampled_from(FIELDS), VALUE).map(lambda kv: enrolled(**{kv[0]: kv[1]}))
BODIES = EVENTS | st.lists(EVENTS | MUTATED, max_size=3) | MUTATED | ANY_JSON


@hypothesis_settings(max_examples=200, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=BODIES)
def test_arbitrary_json_never_gets_a_server_error(api, body):
    response = api(json.dumps(body))
    hypothesis_event(f"{response.status_code} {response.json().get('field')}")  # see --hypothesis-show-statistics
    assert response.status_code in (202, 400), (response.status_code, response.content[:500])
    assert set(response.json()) == ({"accepted", "results"} if response.status_code == 202 else {"error", "field"})


@hypothesis_settings(max_examples=50, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_get_a_server_error(api, body):
    assert api(body).status_code in (202, 400)


def test_the_schema_of_every_accepted_event_is_served_without_a_token(client, settings):
    settings.DRIP_API_TOKEN = ""  # the schema holds no data: it answers even while the API is off
    response = client.get("/api/events/schema")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    schema = response.json()
    text = json.dumps(schema)
    for name in ("event.enrolled", "event.completed", "event.rescheduled", "event.cancelled",
                 "registration.cancelled", "message.send"):
        assert f'"{name}"' in text, name
    for field in ("contactId", "scheduledAt", "attendedRegistrationIds", "templateType"):
        assert f'"{field}"' in text, field
    assert client.post("/api/events/schema").status_code == 405


def test_completing_before_the_start_is_a_400_unless_forced_and_links_are_kept(api):
    make_event(external_id="e-future", starts_in=3600 * 24)
    early = event("event.completed", eventId="e-future", completedAt=timezone.now().isoformat())
    response = api(early)
    assert (response.status_code, response.json()["field"]) == (400, "data.completedAt")
    assert "before the event's scheduled start" in response.json()["error"]
    assert Event.objects.get(external_id="e-future").status == Event.Status.SCHEDULED
    forced = event("event.completed", eventId="e-future", completedAt=timezone.now().isoformat(), force=True,
                   recordingUrl="https://example.com/rec", slidesUrl="https://example.com/slides.pdf")
    assert api(forced).status_code == 202
    done = Event.objects.get(external_id="e-future")
    assert (done.status, done.recording_url, done.slides_url) == (
        Event.Status.COMPLETED, "https://example.com/rec", "https://example.com/slides.pdf"
    )
