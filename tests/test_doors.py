"""Input rules at every door (docs/security.md, "Input at every door"): no quoted local part, IP literal or
localhost in an email address; no control or format character (Unicode Cc, Cf, and the line
separators) in an id or a text; http(s) URLs only, without user info. Each refused value is
a 400 (or a form error) naming the field, and nothing is written. The same validators
(drip/domain/validation.py) serve the API, the CSV import, the console's forms and the webhooks."""
from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from drip.domain.validation import (
    validate_email_address,
    validate_http_url,
    validate_no_control_characters,
    validate_text_line,
    validate_webhook_address,
)
from drip.doors.console import csv_import
from drip.models import ConsentRecord, Contact, Event, Message, Registration, Step
from tests.factories import make_event

IN_TWO_DAYS = (timezone.now() + timedelta(days=2)).replace(microsecond=0)

QUOTED = '"victim@evil.example,x"@example.com'
IP_LITERAL = "root@[127.0.0.1]"
USERINFO_URL = "https://meet.example.com@evil.example/x"


def rows() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in (Contact, ConsentRecord, Event, Registration, Step, Message)}


def enrolled(**overrides: Any) -> dict[str, Any]:
    data = {
        "contactId": "c-ada", "eventId": "e-webinar", "registrationId": "r-ada", "eventTitle": "Launch webinar",
        "scheduledAt": IN_TWO_DAYS.isoformat(), "contactEmail": "ada@example.com", "contactPhone": "+14155550101",
        "firstName": "Ada", "lastName": "Lovelace", "timezone": "Europe/London",
        "joinUrl": "https://meet.example.com/j/1", "emailConsent": True, "smsConsent": True,
    }
    data.update(overrides)
    return {"name": "event.enrolled", "data": data}


def completed(**overrides: Any) -> dict[str, Any]:
    data = {"eventId": "e-known", "completedAt": timezone.now().replace(microsecond=0).isoformat(), **overrides}
    return {"name": "event.completed", "data": data}


# --- the API: every row of the table, and its neighbours -------------------------

REFUSED = [
    # (what, body, field, words in the error)
    ("quoted local part", enrolled(contactEmail=QUOTED), "data.contactEmail", "quoted local part"),
    ("IP-literal domain", enrolled(contactEmail=IP_LITERAL), "data.contactEmail", "not an IP address"),
    ("IPv6 literal", enrolled(contactEmail="root@[IPv6:::1]"), "data.contactEmail", "not an IP address"),
    ("localhost", enrolled(contactEmail="root@localhost"), "data.contactEmail", "not a valid email address"),
    ("zero-width space in an address", enrolled(contactEmail="ada@exa\u200bmple.com"), "data.contactEmail", "U+200B"),
    ("newline in contactId (a forged log line)", enrolled(contactId="c-ada\n2026-01-01 INFO drip.audit forged"),
     "data.contactId", "control or format characters (U+000A at position 5)"),
    ("carriage return in registrationId", enrolled(registrationId="r-ada\r"), "data.registrationId", "U+000D"),
    ("escape sequence in eventId", enrolled(eventId="e\x1b[31mred"), "data.eventId", "U+001B"),
    ("zero-width space in eventId", enrolled(eventId="e-web\u200binar"), "data.eventId", "U+200B"),
    ("right-to-left override in the title", enrolled(eventTitle="Launch \u202egnp.exe"), "data.eventTitle", "U+202E"),
    ("line separator in a name", enrolled(firstName="Ada\u2028Admin"), "data.firstName", "U+2028"),
    ("byte-order mark in a name", enrolled(lastName="\ufeffLovelace"), "data.lastName", "U+FEFF"),
    ("tab in a phone", enrolled(contactPhone="+1415555\t0101"), "data.contactPhone", "U+0009"),
    ("user info in joinUrl", enrolled(joinUrl=USERINFO_URL), "data.joinUrl", "user info"),
    ("user and password in joinUrl", enrolled(joinUrl="https://u:p@meet.example.com/j/1"), "data.joinUrl", "user info"),
    ("javascript: joinUrl", enrolled(joinUrl="javascript:alert(1)"), "data.joinUrl", "http(s) URL"),
    ("ftp joinUrl", enrolled(joinUrl="ftp://files.example.com/x"), "data.joinUrl", "http(s) URL"),
    ("newline in joinUrl", enrolled(joinUrl="https://meet.example.com/j/1\nX"), "data.joinUrl", "U+000A"),
    ("user info in recordingUrl", completed(recordingUrl=USERINFO_URL), "data.recordingUrl", "user info"),
    ("user info in slidesUrl", completed(slidesUrl="http://a@evil.example/"), "data.slidesUrl", "user info"),
    ("control character in an attendee id", completed(attendedRegistrationIds=["r-known", "r\x00x"]),
     "data.attendedRegistrationIds[1]", "NUL"),
    ("format character in an attendee id", completed(attendedRegistrationIds=["r-known\u2066"]),
     "data.attendedRegistrationIds[0]", "U+2066"),
    ("newline in a cancelled registration's id", {"name": "registration.cancelled", "data": {"registrationId": "r\nx"}},
     "data.registrationId", "U+000A"),
    ("newline in a direct send's contactId", {"name": "message.send", "data": {
        "contactId": "c-known\n", "templateType": "welcome", "channel": "email"}}, "data.contactId", "U+000A"),
    ("the second event of a list", [enrolled(), enrolled(contactId="c-bob\n", registrationId="r-bob")],
     "[1].data.contactId", "U+000A"),
]


@pytest.fixture
def known(db) -> Event:
    return make_event(external_id="e-known", starts_in=-3600)


@pytest.mark.parametrize("body,field,words", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_it_refuses_hostile_input_at_the_api_naming_the_field_and_writes_nothing(api, known, body, field, words):
    before = rows()
    response = api(body)
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert words in response.json()["error"], response.json()["error"]
    assert rows() == before


def test_the_error_shows_a_refused_character_by_its_code_point_never_raw(api):
    response = api(enrolled(contactId="c-ada\n2026-01-01 INFO forged"))
    assert "\n" not in response.json()["error"] and "forged" not in response.json()["error"]


def test_joiners_are_spelling_in_names_and_titles_and_are_accepted(api):
    # ZWNJ (Persian "Mehrnaz") and ZWJ (emoji sequences) are Cf, yet part of how people write.
    response = api(enrolled(firstName="\u0645\u0647\u0631\u200c\u0646\u0627\u0632", eventTitle="Team \U0001F469\u200d\U0001F4BB call"))
    assert response.status_code == 202, response.json()
    assert Contact.objects.get().first_name == "\u0645\u0647\u0631\u200c\u0646\u0627\u0632"


def test_a_joiner_is_still_refused_in_an_id(api):
    response = api(enrolled(contactId="c\u200dada"))
    assert (response.status_code, response.json()["field"]) == (400, "data.contactId")


def test_plain_addresses_and_urls_pass(api):
    response = api(enrolled(contactEmail="Ada.Lovelace+webinar@sub.example.co.uk", joinUrl="http://meet.example.com:8443/j/1?pwd=x#y"))
    assert response.status_code == 202, response.json()


# --- the validators themselves: the webhooks' and the models' rules ------------------------


@pytest.mark.parametrize("validator,value", [
    (validate_email_address, QUOTED), (validate_email_address, IP_LITERAL), (validate_email_address, "root@localhost"),
    (validate_email_address, "a\n@example.com"), (validate_http_url, USERINFO_URL), (validate_http_url, "file:///etc/passwd"),
    (validate_no_control_characters, "a\u202eb"), (validate_no_control_characters, "a\u200cb"), (validate_text_line, "a\u2029b"),
    (validate_webhook_address, "+14155550101\n"), (validate_webhook_address, "+1415<script>"), (validate_webhook_address, "x" * 40),
])
def test_each_rule_is_one_django_validator(validator, value):
    with pytest.raises(ValidationError):
        validator(value)


@pytest.mark.parametrize("value", ["+14155550101", "whatsapp:+14155550101", "12345", "DripEvents"])
def test_a_webhook_address_is_a_number_a_short_code_or_a_sender_id(value):
    validate_webhook_address(value)


# --- the console: the model fields carry the validators, so the admin's forms refuse ------


class Inputs(HTMLParser):
    """The form's current values as the browser would submit them (inline formsets'
    management fields included), so a test changes only the fields it is about."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("checkbox", "submit", "file"):
            self.values[name] = a.get("value") or ""


def form_values(client: Client, url: str) -> dict[str, str]:
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    parser = Inputs()
    parser.feed(page.content.decode())
    return parser.values


@pytest.fixture
def superuser_client(db) -> Client:
    client = Client()
    user = User.objects.create_superuser("root", "root@example.com", "a long enough password")
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def errors_of(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, (response.status_code, response.get("Location"))
    return dict(response.context["adminform"].form.errors)


@pytest.mark.parametrize("field,value,words", [
    ("email", QUOTED, "quoted local part"),
    ("email", IP_LITERAL, "not an IP address"),
    ("external_id", "c-ada\nforged", "control or format characters"),
    ("first_name", "Ada\u202e", "control or format characters"),
])
def test_the_contact_form_refuses_the_same_values(superuser_client, field, value, words):
    url = reverse("admin:drip_contact_add")
    data = {**form_values(superuser_client, url), "external_id": "c-ada", "email": "ada@example.com",
            "first_name": "Ada", "timezone": "UTC", field: value}
    before = rows()
    errors = errors_of(superuser_client.post(url, data))
    assert field in errors and any(words in e for e in errors[field]), errors
    assert rows() == before


@pytest.mark.parametrize("field,value,words", [
    ("join_url", USERINFO_URL, "user info"),
    ("recording_url", "ftp://files.example.com/r.mp4", "http(s) URL"),
    ("title", "Launch\u202egnp.exe", "control or format characters"),
    ("external_id", "e\u200bx", "control or format characters"),
])
def test_the_event_form_refuses_the_same_values(superuser_client, field, value, words):
    event = make_event(external_id="e-console", title="Console webinar")
    url = reverse("admin:drip_event_change", args=[event.pk])
    data = {**form_values(superuser_client, url), field: value}
    errors = errors_of(superuser_client.post(url, data))
    assert field in errors and any(words in e for e in errors[field]), errors
    event.refresh_from_db()
    assert (event.external_id, event.title, event.join_url, event.recording_url) == (
        "e-console", "Console webinar", event.join_url, "")


def test_the_event_form_saves_a_clean_change(superuser_client):
    # The form helper above submits what a browser would: a clean change does save.
    event = make_event(external_id="e-console", title="Console webinar")
    url = reverse("admin:drip_event_change", args=[event.pk])
    response = superuser_client.post(url, {**form_values(superuser_client, url), "join_url": "https://meet.example.com/new"})
    assert response.status_code == 302, errors_of(response)
    event.refresh_from_db()
    assert event.join_url == "https://meet.example.com/new"


# --- the CSV import: the API's parser, so the API's rules, row by row -----------------------


def test_the_csv_import_refuses_each_row_naming_its_column(superuser_client):
    event = make_event(external_id="e-csv")
    text = "\n".join([
        "contact_id,email,first_name",
        "c-ok,ok@example.com,Ok",
        "c-quoted," + '"' + QUOTED.replace('"', '""') + '"' + ",Q",  # CSV-quoted
        f"c-ip,{IP_LITERAL},I",
        "c-rtl,rtl@example.com,Eve\u202e",
        "c-zw\u200b,zw@example.com,Z",
    ])
    checked = csv_import.plan(text, event)
    errors = {row.line: row.errors for row in checked.rows}
    assert errors[2] == []
    assert "email" in errors[3][0] and "quoted local part" in errors[3][0]
    assert "email" in errors[4][0] and "not an IP address" in errors[4][0]
    assert "first_name" in errors[5][0] and "U+202E" in errors[5][0]
    assert "contact_id" in errors[6][0] and "U+200B" in errors[6][0]
    assert not checked.ok

    # Through the console's import view: the preview lists them, and "confirm" writes nothing.
    before = rows()
    url = reverse("admin:drip_contact_import")
    response = superuser_client.post(url, {"event": event.pk, "csv_text": text, "confirm": "1"})
    assert response.status_code == 200
    assert "quoted local part" in response.content.decode()
    assert rows() == before
