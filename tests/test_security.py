"""The trust issue's table, row by row, as an outsider meets it: the event API, the unsubscribe
page, the providers' webhooks, the real worker and the provider stub. A suppression belongs
to the address; only the recipient (their own opt-out) or an operator with a reason lifts one;
a decision that can change before the due time is made at the send.

The console's rows (view-only staff, lockout, the audit trail) are in
tests/test_console_permissions.py and tests/test_audit.py; the input rules in tests/test_doors.py.
"""
from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import ProtectedError
from django.test import Client
from django.utils import timezone

from drip.domain.consent import has_consent
from drip.domain.pacing import parse_quiet_hours
from drip.domain.tokens import make_token
from drip.models import Channel, ConsentRecord, Contact, DeliveryReport, Message, Purpose, Suppression
from drip.timer.publish import enqueue_sends
from tests.factories import make_contact
from tests.helpers import current, wait_until
from tests.test_inbound_email_reports import SECRET, bounce, sent_email
from tests.test_inbound_email_reports import post as post_report
from tests.test_inbound_twilio import INBOUND, TOKEN, inbound_params, signed_post
from tests.test_pacing import night_zone_now

API_TOKEN = "s3cret-token"
START = (timezone.now() + timedelta(days=2)).replace(microsecond=0)


@pytest.fixture
def api(settings, providers) -> Any:
    settings.DRIP_API_TOKEN = API_TOKEN
    settings.TWILIO_AUTH_TOKEN = TOKEN
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": SECRET}
    client = Client()

    def send(*events: dict[str, Any]) -> list[dict[str, Any]]:
        response = client.post("/api/events", json.dumps(list(events)), content_type="application/json",
                               headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert response.status_code == 202, response.content
        return response.json()["results"]

    return send


def enrolled(n: str, **overrides: Any) -> dict[str, Any]:
    data = {
        "contactId": f"c-{n}", "eventId": "e-trust", "registrationId": f"r-{n}", "eventTitle": "Trust webinar",
        "scheduledAt": START.isoformat(), "contactEmail": f"{n}@example.com", "firstName": n.title(),
        "timezone": "Europe/London", "joinUrl": "https://meet.example.com/j/1", "emailConsent": True,
    }
    data.update(overrides)
    return {"name": "event.enrolled", "data": data}


def welcome_sent(contact_id: str) -> Message:
    wait_until(lambda: Message.objects.filter(
        contact__external_id=contact_id, template_type="welcome", status__in=["sent", "skipped", "failed"]).exists())
    return Message.objects.get(contact__external_id=contact_id, template_type="welcome")


def unsubscribe_link(providers, to: str) -> str:
    [got] = [r for r in providers.messages("email", to=to) if "List-Unsubscribe" in r.headers][:1]
    return re.fullmatch(r"<https?://[^/]+(/u/.+/)>", got.headers["List-Unsubscribe"]).group(1)  # type: ignore[union-attr]


def one_click(path: str) -> Any:
    return Client().post(path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")


# --- row 1: an unsubscribe covers a new contact id at the same address, in any case --------

def test_an_unsubscribed_address_enrolled_again_under_a_new_id_is_refused_and_never_mailed(worker, api, providers):
    api(enrolled("uma"))
    assert welcome_sent("c-uma").status == Message.Status.SENT
    assert one_click(unsubscribe_link(providers, "uma@example.com")).status_code == 200
    [result] = api(enrolled("uma2", contactEmail="UMA@Example.com"))
    assert result["consentRefused"] == {"email": "suppressed by the recipient (unsubscribe:one-click)"}
    assert result["consent"]["email"] is False
    assert welcome_sent("c-uma2").status == Message.Status.SKIPPED
    assert len(providers.messages("email")) == 1  # the first welcome only


# --- row 2: a contact whose address changes to a suppressed one --------------------------------

def test_a_contact_whose_email_changes_to_a_suppressed_address_is_not_mailed_there(worker, api, providers):
    api(enrolled("uma"), enrolled("vic"))
    welcome_sent("c-uma"), welcome_sent("c-vic")
    one_click(unsubscribe_link(providers, "uma@example.com"))
    vic = Contact.objects.get(external_id="c-vic")
    assert has_consent(vic, Channel.EMAIL)
    # The producer changes vic's address to uma's, without a word about consent.
    [result] = api(enrolled("vic", contactEmail="uma@example.com", emailConsent=None))
    assert result["consent"]["email"] is False and "consentRefused" not in result
    message = Message.objects.create(contact=vic, registration=vic.registrations.get(), channel=Channel.EMAIL,
                                     template_type="reminder_24h", to="vic@example.com")
    enqueue_sends([(message.pk, Channel.EMAIL)])
    wait_until(lambda: Message.objects.get(pk=message.pk).status == Message.Status.SKIPPED)
    assert Message.objects.get(pk=message.pk).error == "no email consent"
    assert [r.to for r in providers.messages("email")].count("uma@example.com") == 1  # her own welcome only


# --- row 3: a provider's suppression is never lifted by the recipient's link -------------------

def test_a_complaint_is_not_lifted_by_the_unsubscribe_pages_resubscribe(worker, api, providers):
    api(enrolled("wes"))
    message = welcome_sent("c-wes")
    path = unsubscribe_link(providers, "wes@example.com")
    complaint = {**bounce(message, type_="SpamComplaint"), "RecordType": "SpamComplaint"}
    assert post_report(Client(), complaint).status_code == 200
    wes = Contact.objects.get(external_id="c-wes")
    assert (current(wes, Channel.EMAIL).source, has_consent(wes, Channel.EMAIL)) == ("provider", False)
    page = Client().get(path).content.decode()
    assert "You are unsubscribed" in page and 'name="again"' not in page  # no re-subscribe offered
    for forged in ({"action": "resubscribe"}, {"action": "resubscribe", "again": "x:y:z"}):
        Client().post(path, forged)
    assert not has_consent(wes, Channel.EMAIL)
    assert Suppression.objects.get(channel=Channel.EMAIL).lifted_at is None


def test_the_recipients_own_opt_out_is_lifted_once_by_the_pages_value_and_never_cross_site(worker, api, providers):
    api(enrolled("ann"))
    welcome_sent("c-ann")
    path = unsubscribe_link(providers, "ann@example.com")
    page = Client().post(path, {}).content.decode()
    again = re.search(r'name="again" value="([^"]+)"', page).group(1)
    ann = Contact.objects.get(external_id="c-ann")
    # A cross-site form cannot read the page: without its value nothing is lifted.
    assert "could not re-subscribe" in Client().post(path, {"action": "resubscribe"}).content.decode()
    assert not has_consent(ann, Channel.EMAIL)
    assert "subscribed again" in Client().post(path, {"action": "resubscribe", "again": again}).content.decode()
    assert has_consent(ann, Channel.EMAIL)
    one_click(path)  # unsubscribed again: the old value names a lifted opt-out and works no more
    Client().post(path, {"action": "resubscribe", "again": again})
    assert not has_consent(ann, Channel.EMAIL)


def test_a_link_from_an_old_address_never_unsubscribes_the_new_one(worker, api, providers):
    api(enrolled("ola"))
    welcome_sent("c-ola")
    old_link = unsubscribe_link(providers, "ola@example.com")
    api(enrolled("ola", contactEmail="ola.new@example.com"))
    ola = Contact.objects.get(external_id="c-ola")
    page = one_click(old_link)
    assert page.status_code == 200
    assert has_consent(ola, Channel.EMAIL)  # the new address is untouched
    assert Suppression.objects.get().address == "ola@example.com"  # the old one is what said no


# --- row 4: START never grants consent nobody gave ----------------------------------------------

@pytest.mark.parametrize("word", ["Yes", "START", "unstop"])
def test_start_or_yes_from_a_number_without_consent_grants_nothing(worker, api, providers, word):
    api(enrolled("sam", contactPhone="+14155550142", smsConsent=False))
    sam = Contact.objects.get(external_id="c-sam")
    assert signed_post(Client(), INBOUND, inbound_params("+14155550142", word)).status_code == 200
    assert not has_consent(sam, Channel.SMS)
    assert not ConsentRecord.objects.filter(contact=sam, channel=Channel.SMS, granted=True).exists()


# --- row 5: a direct send of a marketing template is paced as the funnel's is ---------------------

def test_a_direct_marketing_sms_at_night_waits_for_the_morning(worker, api, providers, settings):
    settings.DRIP_SMS_QUIET_HOURS = parse_quiet_hours("21:00-08:00")
    api(enrolled("nia", contactPhone="+14155550143", smsConsent=True, timezone=night_zone_now()))
    welcome_sent("c-nia")
    [result] = api({"name": "message.send", "data": {
        "contactId": "c-nia", "registrationId": "r-nia", "templateType": "reengagement", "channel": "sms"}})
    message = Message.objects.get(pk=result["messageId"])
    assert message.purpose == Purpose.MARKETING
    wait_until(lambda: Message.objects.get(pk=message.pk).error.startswith("held for quiet hours"))
    assert Message.objects.get(pk=message.pk).status == Message.Status.QUEUED
    assert providers.messages("sms") == []


# --- row 8: consent is decided at the send, not when the step was prepared ----------------------

def test_a_start_between_the_steps_preparation_and_its_due_time_is_honoured(worker, api, providers, settings):
    settings.DRIP_STEP_LEAD = 30.0  # the step task runs long before the reminder is due
    starts = timezone.now() + timedelta(hours=1, seconds=6)  # reminder_1h due in ~6 s
    api(enrolled("stu", contactPhone="+14155550144", smsConsent=True, scheduledAt=starts.isoformat()))
    signed_post(Client(), INBOUND, inbound_params("+14155550144", "STOP"))
    # Prepared while the number is stopped: queued for the send to decide, not skipped.
    wait_until(lambda: Message.objects.filter(template_type="reminder_1h", channel=Channel.SMS).exists())
    sms = Message.objects.get(template_type="reminder_1h", channel=Channel.SMS)
    assert sms.status == Message.Status.QUEUED and sms.next_attempt_at > timezone.now()
    signed_post(Client(), INBOUND, inbound_params("+14155550144", "START"))
    wait_until(lambda: Message.objects.get(pk=sms.pk).status == Message.Status.SENT, timeout=30)
    assert [r.to for r in providers.messages("sms")] == ["+14155550144"]


# --- row 9: a personal join link belongs to its registration -------------------------------------

def test_personal_join_links_stay_with_their_registrant_and_event_changes_are_reported(worker, api, providers):
    api(enrolled("pia", registrantJoinUrl="https://zoom.example.com/w/1?tk=PIA"),
        enrolled("pat", registrantJoinUrl="https://zoom.example.com/w/1?tk=PAT"))
    welcome_sent("c-pia"), welcome_sent("c-pat")
    [pia] = providers.messages("email", to="pia@example.com")
    [pat] = providers.messages("email", to="pat@example.com")
    assert "tk=PIA" in pia.text and "tk=PAT" not in pia.text
    assert "tk=PAT" in pat.text and "tk=PIA" not in pat.text
    [result] = api(enrolled("pam", joinUrl="https://meet.example.com/j/2"))
    assert result["eventUpdated"] == ["joinUrl"]


# --- the ESP is the authority on its own reports ----------------------------------------------------

def test_a_hard_bounce_the_message_does_not_know_suppresses_the_address_it_names(db, api):
    message = sent_email(make_contact(email="gone@example.com"))
    payload = {**bounce(message), "MessageID": str(uuid.uuid4()), "Metadata": {}, "Email": "GONE@example.com"}
    assert post_report(Client(), payload).status_code == 200
    assert not DeliveryReport.objects.exists()
    [result] = api(enrolled("gone2", contactEmail="gone@example.com"))
    assert result["consentRefused"]["email"].startswith("suppressed by the provider (postmark:")


# --- erasure: the person goes, the refusal stays -----------------------------------------------------

def test_an_erased_person_is_blank_everywhere_and_their_address_enrolled_again_is_refused(worker, api, providers):
    api(enrolled("eve", contactPhone="+14155550145", smsConsent=True))
    welcome = welcome_sent("c-eve")
    eve = Contact.objects.get(external_id="c-eve")
    with pytest.raises(ProtectedError):
        eve.delete()  # the history outlives the person: erasure, never a cascade
    call_command("erase_contact", "c-eve")
    eve.refresh_from_db()
    assert (eve.email, eve.phone, eve.first_name, eve.external_id) == ("", "", "", f"erased-{eve.pk}")
    assert eve.erased_at is not None and eve.registrations.get().status == "cancelled"
    welcome.refresh_from_db()
    assert (welcome.to, welcome.body, welcome.status) == ("", "", Message.Status.SENT)  # kept, blanked
    assert set(Suppression.objects.values_list("channel", "address", "source")) == {
        (Channel.EMAIL, "", "operator"), (Channel.SMS, "", "operator")}
    [again] = api(enrolled("eve-again", contactEmail="Eve@example.com", contactPhone="+14155550145", smsConsent=True,
                           registrationId="r-eve-again"))
    assert set(again["consentRefused"]) == {"email", "sms"}
    assert welcome_sent("c-eve-again").status == Message.Status.SKIPPED


def test_a_token_naming_no_contact_or_a_tampered_one_changes_nothing(db):
    token = make_token(10**9, Channel.EMAIL, "x@example.com")
    assert one_click(f"/u/{token}/").status_code == 404
    assert one_click(f"/u/{token[:-2]}xx/").status_code == 400
    assert not Suppression.objects.exists()


def test_no_address_or_number_reaches_a_log_line_whoever_wrote_it():
    """A provider's error text quotes the recipient; the handlers' filter masks it."""
    import logging

    from drip.support.logs import RedactTokens

    record = logging.LogRecord("drip.messages", logging.ERROR, __file__, 1, "failed: %s", (
        "The 'To' number +14155550123 is not valid; Invalid 'To' address: ada.l+x@example.co.uk; see /u/abc:def/",), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == "failed: The 'To' number …0123 is not valid; Invalid 'To' address: a***@example.co.uk; see /u/[token]/"


def test_one_key_for_every_spelling_of_an_address():
    from drip.domain.addresses import address_hash, normalize

    assert normalize("sms", "+14155550123") == "+14155550123"  # stored numbers skip phonenumbers
    assert normalize("sms", "+1 (415) 555-0123") == "+14155550123"
    assert normalize("email", " UMA@Example.COM ") == "uma@example.com"
    assert normalize("email", "ada@bücher.example") == "ada@xn--bcher-kva.example"
    assert address_hash("k", "email", "UMA@example.com") == address_hash("k", "email", "uma@EXAMPLE.com")
    assert address_hash("k", "email", "uma@example.com") != address_hash("other", "email", "uma@example.com")
