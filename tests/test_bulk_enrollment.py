"""A list of `event.enrolled` is applied set-based (drip.engine.bulk, the one enrollment path) and
answers as applying the items one after the other would: each item sees what the items before
it did, errors name the item's field and write nothing; in a number of queries that does not
grow with the list."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from drip.domain.consent import record_consent
from drip.doors.intake.apply import APPLY, handle_payload
from drip.doors.intake.parse import parse_events
from drip.models import Channel, ConsentRecord, Contact, Event, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event

STOPPED_PHONE = "+14155550177"  # the number that texted STOP (the suppression is the number's)
START = (timezone.now() + timedelta(days=2)).replace(microsecond=0)


def enrolled(n: int | str, **overrides: Any) -> dict[str, Any]:
    data = {
        "contactId": f"c-{n}", "eventId": "e-webinar", "registrationId": f"r-{n}", "eventTitle": "Launch webinar",
        "scheduledAt": START.isoformat(), "contactEmail": f"person{n}@example.com", "contactPhone": "+14155550101",
        "firstName": "Ada", "lastName": f"Person {n}", "timezone": "Europe/London",
        "joinUrl": "https://example.com/join/1", "emailConsent": True, "smsConsent": True,
    }
    data.update(overrides)
    return {"name": "event.enrolled", "data": {k: v for k, v in data.items() if v is not ...}}


def event(name: str, **data: Any) -> dict[str, Any]:
    return {"name": name, "data": data}


NOW_IN_REASON = re.compile(r"planned at \S+")


def snapshot() -> dict[str, list]:
    """Every row an enrollment writes, by external ids, without what depends on the clock
    (the welcome is due "now"; a skip's reason names when it was planned)."""
    return {
        "contacts": list(Contact.objects.order_by("external_id").values_list(
            "external_id", "email", "phone", "first_name", "last_name", "timezone")),
        "events": list(Event.objects.order_by("external_id").values_list(
            "external_id", "title", "starts_at", "timezone", "join_url", "status")),
        "registrations": list(Registration.objects.order_by("external_id").values_list(
            "external_id", "contact__external_id", "event__external_id", "status", "cancelled_at")),
        "consents": list(ConsentRecord.objects.order_by("contact__external_id", "channel", "created_at", "id").values_list(
            "contact__external_id", "channel", "granted", "source", "detail")),
        "steps": sorted(
            (s.registration.external_id, s.funnel, s.key, s.plan_version, s.anchor_at, s.expires_at, s.status,
             NOW_IN_REASON.sub("planned at NOW", s.reason), None if s.key == "welcome" else s.due_at)
            for s in Step.objects.select_related("registration")
        ),
        "messages": list(Message.objects.order_by("id").values_list("contact__external_id", "channel", "status", "error")),
    }


def applied(api, body: list[dict[str, Any]]) -> tuple[int, Any, dict[str, list]]:
    """(status, results or error body, rows afterwards)."""
    response = api(body)
    return response.status_code, response.json(), snapshot()


@pytest.fixture
def world(db):
    """An event with registrations, a contact with a STOP, a cancelled registration, a
    queued SMS for a contact whose next enrollment revokes SMS."""
    ev = make_event(external_id="e-webinar", starts_at=START, title="Launch webinar", join_url="https://example.com/join/1")
    known = make_contact(external_id="c-known", email="known@example.com")
    reg = enroll(known, ev)
    Registration.objects.filter(pk=reg.pk).update(external_id="r-known")
    stopped = make_contact(external_id="c-stopped", sms_consent=False, phone=STOPPED_PHONE)
    record_consent(stopped, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    gone = make_contact(external_id="c-gone")
    gone_reg = enroll(gone, ev)
    Registration.objects.filter(pk=gone_reg.pk).update(external_id="r-gone")
    APPLY["registration.cancelled"](parse_events(event("registration.cancelled", registrationId="r-gone"))[0])
    revoking = make_contact(external_id="c-revoking")
    revoking_reg = enroll(revoking, ev)
    Registration.objects.filter(pk=revoking_reg.pk).update(external_id="r-revoking")
    Message.objects.create(contact=revoking, registration=revoking_reg, channel=Channel.SMS, template_type="reminder_1h")
    make_event(external_id="e-cancelled", status="cancelled", starts_at=START)
    return ev


# --- the same answers and rows as one at a time ------------------------------------------


def test_a_mixed_list_answers_and_writes_what_applying_it_item_by_item_does(api, world):
    body = [
        enrolled(1),
        enrolled("known", contactEmail="known@example.com", firstName="Changed"),  # updated contact, matched registration
        enrolled(1, firstName="Grace"),  # the same new contact again: updated, registration matched
        enrolled("stopped", smsConsent=True, contactPhone=STOPPED_PHONE),  # a grant refused by the STOP
        enrolled("revoking", smsConsent=False),
        enrolled("gone"),  # a cancelled registration: reactivated
        enrolled(2, eventTitle="Launch webinar (new title)"),  # the event updated
        enrolled(3, emailConsent=False, smsConsent=...),  # a revocation for a new contact, sms untouched
        enrolled(4, eventId="e-cancelled", scheduledAt=START.isoformat()),  # a cancelled event: nothing planned
        enrolled(5, eventId="e-new"),  # a new event
        enrolled(6, eventId="e-new"),
    ]
    bulk = applied(api, body)
    assert bulk[0] == 202, bulk[1]
    results = bulk[1]["results"]
    assert [(r["contact"], r["event"], r["registration"], r["stepsPlanned"]) for r in results] == [
        ("created", "matched", "created", 3), ("updated", "matched", "matched", 0), ("updated", "matched", "matched", 0),
        ("updated", "matched", "created", 3), ("updated", "matched", "matched", 0), ("updated", "matched", "reactivated", 3),
        ("created", "updated", "created", 3), ("created", "updated", "created", 3), ("created", "updated", "created", 0),
        ("created", "created", "created", 3), ("created", "matched", "created", 3),
    ]
    assert results[3]["consentRefused"] == {"sms": "suppressed by the recipient (twilio:STOP)"}
    assert results[7]["consent"] == {"email": False, "sms": False}
    # Every registrant sees a changed title: said in the answer of the item that changed it.
    assert [r.get("eventUpdated") for r in results] == [None] * 6 + [["eventTitle"], ["eventTitle"], ["eventTitle", "joinUrl"], None, None]
    assert ("c-revoking", "sms", "skipped", "no sms consent") in bulk[2]["messages"]
    rows = bulk[2]
    names = {c[0]: c[3] for c in rows["contacts"]}
    assert (names["c-1"], names["c-known"]) == ("Grace", "Changed")  # the last item naming a contact wins
    assert {e[0]: e[1] for e in rows["events"]}["e-webinar"] == "Launch webinar"  # item 7 set it back
    assert ("c-3", "email", False, "api", "api:event.enrolled") in rows["consents"]
    assert not [c for c in rows["consents"] if c[0] == "c-stopped" and c[1] == "sms" and c[2]]  # the refused grant left no row
    assert {r[0]: r[3] for r in rows["registrations"]}["r-gone"] == "active"


def test_a_new_start_in_the_list_replans_what_came_before_it(api, world):
    later = START + timedelta(days=1)
    body = [enrolled(1), enrolled(2, scheduledAt=later.isoformat()), enrolled(3, scheduledAt=later.isoformat()), enrolled(4)]
    bulk = applied(api, body)
    assert bulk[0] == 202, bulk[1]
    assert [r["event"] for r in bulk[1]["results"]] == ["matched", "rescheduled", "matched", "rescheduled"]
    # c-1 was planned for the old start, then re-planned with everyone else, twice (c-4 moves it back).
    steps = [s for s in bulk[2]["steps"] if s[0] == "r-1" and s[2] == "reminder_1h"]
    assert [(s[3], s[6]) for s in steps] == [(1, "cancelled"), (2, "cancelled"), (3, "pending")]


def test_other_events_between_enrollments_apply_in_order(api, world):
    body = [enrolled(1), event("registration.cancelled", registrationId="r-1"), enrolled(1), enrolled(2),
            event("event.rescheduled", eventId="e-webinar", scheduledAt=(START + timedelta(hours=5)).isoformat()), enrolled(3)]
    bulk = applied(api, body)
    assert bulk[0] == 202, bulk[1]
    assert [r.get("registration") for r in bulk[1]["results"]] == ["created", None, "reactivated", "created", None, "created"]
    assert bulk[1]["results"][5]["event"] == "rescheduled"  # back to the start the enrollments carry


def test_repeating_a_list_enrolls_once_and_records_nothing_more(api, world):
    body = [enrolled(n) for n in range(5)] + [enrolled("stopped", smsConsent=True, contactPhone=STOPPED_PHONE)]
    assert api(body).status_code == 202
    before = snapshot()
    again = api(body).json()["results"]
    assert [(r["contact"], r["event"], r["registration"], r["stepsPlanned"]) for r in again] == [
        ("matched", "matched", "matched", 0)] * 6
    assert again[5]["consentRefused"] == {"sms": "suppressed by the recipient (twilio:STOP)"}
    assert snapshot() == before


def test_the_welcome_steps_are_claimed_at_once(api, world):
    assert api([enrolled(n) for n in range(20)]).status_code == 202
    welcome = Step.objects.filter(registration__external_id__startswith="r-", key="welcome", registration__contact__external_id__regex=r"^c-\d+$")
    assert welcome.count() == 20 and set(welcome.values_list("status", flat=True)) == {Step.Status.ENQUEUED}
    reminders = Step.objects.filter(registration__external_id="r-1").exclude(key="welcome")
    assert set(reminders.values_list("status", flat=True)) == {Step.Status.PENDING}


def test_a_grant_in_the_list_never_lifts_a_stop_recorded_earlier_in_it(api, db):
    body = [enrolled(1), enrolled(1, smsConsent=False), enrolled(1, smsConsent=True)]
    bulk = applied(api, body)
    # An API revocation is no suppression: the later grant is recorded again.
    assert [r["consent"]["sms"] for r in bulk[1]["results"]] == [True, False, True]
    contact = make_contact(external_id="c-9", sms_consent=False)
    contact.phone = "+14155550199"
    contact.save()
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.PROVIDER, detail="twilio:21610")
    phone = contact.phone
    bulk = applied(api, [enrolled(9, contactPhone=phone), enrolled(9, smsConsent=False, contactPhone=phone),
                         enrolled(9, smsConsent=True, contactPhone=phone)])
    assert [r.get("consentRefused") for r in bulk[1]["results"]] == [
        {"sms": "suppressed by the provider (twilio:21610)"}, None, {"sms": "suppressed by the provider (twilio:21610)"}]


# --- errors: the same message and field, nothing written ----------------------------------


ERRORS = [
    ("registration of another contact", [enrolled(1), enrolled(2), enrolled(3, registrationId="r-known")],
     "[2].data.registrationId", "belongs to another contact ('c-known')"),
    ("registration of another contact, created earlier in the list", [enrolled(1), enrolled(2, registrationId="r-1")],
     "[1].data.registrationId", "belongs to another contact ('c-1')"),
    ("registration of another event", [enrolled(1), enrolled(1, eventId="e-new")],
     "[1].data.registrationId", "belongs to another event ('e-webinar')"),
    ("already registered under another id", [enrolled(1), enrolled(2), enrolled(3), enrolled("known", registrationId="r-other")],
     "[3].data.registrationId", "already registered for event 'e-webinar' as registration 'r-known'"),
    ("already registered earlier in the list", [enrolled(1), enrolled(1, registrationId="r-again")],
     "[1].data.registrationId", "already registered for event 'e-webinar' as registration 'r-1'"),
    ("a new start for a cancelled event", [enrolled(1), enrolled(2, eventId="e-cancelled", scheduledAt=(START + timedelta(days=1)).isoformat())],
     "[1].data.scheduledAt", "is cancelled: its start can no longer change"),
    ("after a reschedule and a reactivation", [enrolled(1, scheduledAt=(START + timedelta(days=1)).isoformat()), enrolled("gone"),
                                               enrolled(2, registrationId="r-known")],
     "[2].data.registrationId", "belongs to another contact"),
]


@pytest.mark.parametrize("body,field,words", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_a_refused_item_is_named_and_the_whole_list_is_rolled_back(api, world, body, field, words):
    before = snapshot()
    bulk = applied(api, body)
    assert bulk[0] == 400
    assert bulk[1]["field"] == field and words in bulk[1]["error"], bulk[1]
    assert bulk[2] == before


# --- the number of queries does not grow with the list -----------------------------------

# Measured on PostgreSQL: 19 for a new list of one event, whether of 1, 10 or 200 items (5 reads;
# contacts, their updates, consent records and registrations written; 3 step inserts; the
# welcome's claim: 3; savepoints), 7 when the list is repeated.
QUERY_BOUND = 19


@pytest.mark.parametrize("size", [10, 200])
def test_the_queries_for_a_list_are_bounded_whatever_its_length(django_assert_max_num_queries, world, size):
    # SQLite: Django cuts every bulk insert into statements of 999 parameters (about 130
    # rows), so there the count grows by a few statements per hundred items.
    bound = QUERY_BOUND if connection.vendor == "postgresql" else QUERY_BOUND + 3 * (size // 100)
    body = [enrolled(n) for n in range(size)] + [enrolled("known", firstName="New name")]
    with django_assert_max_num_queries(bound):
        result = handle_payload(body)
    assert result["accepted"] == size + 1
    with django_assert_max_num_queries(bound):
        handle_payload(body)  # repeated: all matched
    assert Registration.objects.filter(external_id__regex=r"^r-\d+$").count() == size
