"""Twilio's callbacks, signed in the test with twilio's own RequestValidator: status reports
for our SMS and the SMS recipients send (STOP, START, HELP, anything else)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from twilio.request_validator import RequestValidator

from drip.domain.consent import has_consent, record_consent
from drip.engine.direct import send_direct
from drip.models import (
    Channel,
    ConsentRecord,
    Contact,
    DeliveryReport,
    InboundSms,
    Message,
    Registration,
    Step,
    Suppression,
)
from tests.factories import enroll, make_contact, make_event, register_quietly
from tests.helpers import current, settled, wait_until

TOKEN = "test-auth-token"
STATUS = "/webhooks/twilio/status/"
INBOUND = "/webhooks/twilio/inbound/"
FORM = "application/x-www-form-urlencoded"



@pytest.fixture
def twilio(settings):
    settings.TWILIO_AUTH_TOKEN = TOKEN
    return settings


def sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def signed_post(client: Client, path: str, params: dict[str, str], signature: str | None = None, **extra: Any) -> Any:
    """What Twilio does: a form POST, signed over the public URL and the parameters."""
    if signature is None:
        signature = sign(django_settings.PUBLIC_BASE_URL + path, params)
    headers = {"X-Twilio-Signature": signature} if signature else {}
    return client.post(path, urlencode(params), content_type=FORM, headers=headers, **extra)


def sent_sms(contact: Contact | None = None, status: str = Message.Status.SENT) -> Message:
    contact = contact or make_contact()
    return Message.objects.create(
        contact=contact, channel=Channel.SMS, template_type="reminder_24h", to=contact.phone, status=status,
        provider_message_id="SM" + "0" * 30 + str(Message.objects.count()), sent_at=timezone.now(),
    )


def status_params(message: Message, status: str, code: str = "") -> dict[str, str]:
    params = {
        "AccountSid": "ACtest", "MessageSid": message.provider_message_id, "SmsSid": message.provider_message_id,
        "MessageStatus": status, "SmsStatus": status, "To": message.to, "From": "+15005550006", "ApiVersion": "2010-04-01",
    }
    if code:
        params["ErrorCode"] = code
    return params


def report(client: Client, message: Message, status: str, code: str = "") -> Any:
    return signed_post(client, f"{STATUS}?m={message.pk}", status_params(message, status, code))


def inbound_params(sender: str, body: str, sid: str = "", **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "ACtest", "MessageSid": sid or f"SM{abs(hash((sender, body, timezone.now()))):032d}"[:34],
        "From": sender, "To": "+15005550006", "Body": body, "NumMedia": "0", "ApiVersion": "2010-04-01", **extra,
    }


# --- the signature --------------------------------------------------------------------------

def test_a_valid_signature_is_accepted(client, db, twilio):
    message = sent_sms()
    assert report(client, message, "delivered").status_code == 204
    assert Message.objects.get(pk=message.pk).status == Message.Status.DELIVERED


@pytest.mark.parametrize("how", ["missing", "forged", "body changed", "query changed", "no token configured"])
def test_a_missing_or_bad_signature_is_403_and_writes_nothing(client, db, twilio, how):
    message = sent_sms()
    params = status_params(message, "undelivered", "30005")
    path = f"{STATUS}?m={message.pk}"
    signature = sign(django_settings.PUBLIC_BASE_URL + path, params)
    if how == "missing":
        signature = ""
    elif how == "forged":
        signature = sign(django_settings.PUBLIC_BASE_URL + path, params, token="someone-elses-token")
    elif how == "body changed":
        params = {**params, "ErrorCode": "30006"}
    elif how == "query changed":
        path = f"{STATUS}?m={message.pk + 1}"
    else:
        twilio.TWILIO_AUTH_TOKEN = ""
    answer = signed_post(client, path, params, signature=signature)
    assert answer.status_code == 403
    # Without a token nothing can be checked: the answer names the setting to set.
    expected = b"TWILIO_AUTH_TOKEN is not configured" if how == "no token configured" else b"invalid Twilio signature"
    assert answer.content == expected
    assert not DeliveryReport.objects.exists()
    assert Message.objects.get(pk=message.pk).status == Message.Status.SENT
    assert has_consent(message.contact, Channel.SMS)


def test_the_inbound_url_checks_the_signature_too(client, db, twilio):
    contact = make_contact()
    params = inbound_params(contact.phone, "STOP")
    assert signed_post(client, INBOUND, params, signature="bm90IGEgc2lnbmF0dXJl").status_code == 403
    assert not InboundSms.objects.exists() and has_consent(contact, Channel.SMS)


def test_behind_a_tls_proxy_the_public_url_is_what_counts(client, db, twilio):
    twilio.PUBLIC_BASE_URL = "https://drip.example.org"
    twilio.ALLOWED_HOSTS = [*django_settings.ALLOWED_HOSTS, "drip.example.org"]
    message = sent_sms()
    path = f"{STATUS}?m={message.pk}"
    params = status_params(message, "delivered")
    # The proxy ends TLS and passes the request on over plain http.
    proxied = {"HTTP_HOST": "drip.example.org", "HTTP_X_FORWARDED_PROTO": "https"}
    internal = sign(f"http://drip.example.org{path}", params)
    assert signed_post(client, path, params, signature=internal, **proxied).status_code == 403
    public = sign(f"https://drip.example.org{path}", params)
    assert signed_post(client, path, params, signature=public, **proxied).status_code == 204
    assert Message.objects.get(pk=message.pk).status == Message.Status.DELIVERED


# --- status reports -------------------------------------------------------------------------------

def test_undelivered_to_an_unknown_handset_fails_and_suppresses_the_number(client, db, twilio):
    message = sent_sms()
    twin = make_contact(phone=message.to)  # the same number, another contact
    report(client, message, "undelivered", "30005")
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED
    assert message.error == "undelivered: twilio error 30005: unknown destination handset (the number does not exist)"
    for contact in (message.contact, twin):
        record = current(contact, Channel.SMS)
        assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.PROVIDER, "twilio:30005")
    assert has_consent(message.contact, Channel.EMAIL)  # the number, not the person


@pytest.mark.parametrize("code", ["30004", "30006"])
def test_blocked_and_landline_suppress(client, db, twilio, code):
    message = sent_sms()
    report(client, message, "failed", code)
    assert Message.objects.get(pk=message.pk).status == Message.Status.FAILED
    assert current(message.contact, Channel.SMS).detail == f"twilio:{code}"


@pytest.mark.parametrize("code", ["30003", "30008"])
def test_unreachable_and_unknown_errors_are_recorded_only(client, db, twilio, code):
    message = sent_sms()
    report(client, message, "undelivered", code)
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED and f"error {code}" in message.error
    assert has_consent(message.contact, Channel.SMS)


def test_reports_out_of_order_never_move_a_message_backwards(client, db, twilio):
    message = sent_sms()
    report(client, message, "delivered")
    report(client, message, "sent")  # late
    report(client, message, "failed", "30008")  # later still, and contradicting
    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED and message.delivered_at is not None
    assert list(DeliveryReport.objects.order_by("id").values_list("kind", "applied")) == [
        ("delivered", True), ("sent", False), ("failed", False)]


def test_a_repeated_status_report_changes_nothing(client, db, twilio):
    message = sent_sms()
    for _ in range(3):
        assert report(client, message, "undelivered", "30005").status_code == 204
    assert DeliveryReport.objects.count() == 1
    assert Suppression.objects.filter(channel=Channel.SMS).count() == 1


def test_a_report_for_an_unknown_message_is_answered_and_stores_nothing(client, db, twilio):
    message = sent_sms()
    params = {**status_params(message, "delivered"), "MessageSid": "SMunknown", "SmsSid": "SMunknown"}
    assert signed_post(client, STATUS, params).status_code == 204
    assert not DeliveryReport.objects.exists()


def test_the_sid_finds_the_message_without_the_query(client, db, twilio):
    message = sent_sms()
    assert signed_post(client, STATUS, status_params(message, "delivered")).status_code == 204
    assert Message.objects.get(pk=message.pk).status == Message.Status.DELIVERED


# --- inbound SMS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,keyword", [
    ("stop", "STOP"), (" Stop ", "STOP"), ("STOPALL", "STOPALL"), ("Unsubscribe", "UNSUBSCRIBE"), ("cancel", "CANCEL"),
    ("end", "END"), ("quit", "QUIT"), ("Revoke", "REVOKE"), ("OPTOUT", "OPTOUT"),
])
def test_an_opt_out_keyword_revokes_sms_for_every_contact_at_the_number(client, db, twilio, body, keyword):
    contact = make_contact()
    twin = make_contact(phone=contact.phone)
    waiting = Message.objects.create(contact=twin, channel=Channel.SMS, template_type="reminder_1h", to=twin.phone)
    response = signed_post(client, INBOUND, inbound_params(contact.phone, body))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/xml")
    assert response.content.decode().endswith("<Response />")
    for c in (contact, twin):
        record = current(c, Channel.SMS)
        assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.RECIPIENT, f"twilio:{keyword}")
        assert has_consent(c, Channel.EMAIL)
    waiting.refresh_from_db()
    assert (waiting.status, waiting.error) == (Message.Status.SKIPPED, "no sms consent")
    stored = InboundSms.objects.get()
    assert (stored.kind, stored.handled, stored.opted_out) == (InboundSms.Kind.OPT_OUT, True, True)


def test_twilio_opt_out_type_is_honoured(client, db, twilio):
    contact = make_contact()
    signed_post(client, INBOUND, inbound_params(contact.phone, "arrêtez", OptOutType="STOP"))
    assert not has_consent(contact, Channel.SMS)


@pytest.mark.parametrize("word", ["START", " unstop "])
def test_an_opt_in_keyword_lifts_the_recipients_own_stop(client, db, twilio, word):
    contact = make_contact()
    signed_post(client, INBOUND, inbound_params(contact.phone, "STOP"))
    assert not has_consent(contact, Channel.SMS)
    signed_post(client, INBOUND, inbound_params(contact.phone, word))
    # The STOP is undone: the producer's grant before it is in force again, nothing new granted.
    record = current(contact, Channel.SMS)
    assert (record.granted, record.source, record.is_suppression) == (True, ConsentRecord.Source.API, False)
    stop = Suppression.objects.get(channel=Channel.SMS)
    assert (stop.detail, stop.lifted_by, stop.lifted_at is not None) == ("twilio:STOP", f"twilio:{word.strip().upper()}", True)


@pytest.mark.parametrize("word", ["START", "Yes", "UNSTOP"])
def test_start_never_grants_consent_nobody_gave(client, db, twilio, word):
    contact = make_contact(sms_consent=False)
    signed_post(client, INBOUND, inbound_params(contact.phone, word))
    assert not has_consent(contact, Channel.SMS)
    assert not contact.consents.filter(channel=Channel.SMS, granted=True).exists()
    # "yes" is no keyword: people answer yes to anything; it waits in the inbox.
    expected = InboundSms.Kind.OTHER if word == "Yes" else InboundSms.Kind.OPT_IN
    assert InboundSms.objects.get().kind == expected


def test_start_never_lifts_a_providers_suppression(client, db, twilio):
    contact = make_contact()
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.PROVIDER, detail="twilio:30006")  # a landline
    signed_post(client, INBOUND, inbound_params(contact.phone, "START"))
    assert not has_consent(contact, Channel.SMS)
    assert Suppression.objects.get().lifted_at is None


@pytest.mark.parametrize("word", ["HELP", "info", " Help "])
def test_help_gets_the_help_text(client, db, twilio, word):
    twilio.DRIP_SMS_HELP_TEXT = "Acme events: help at help@acme.test. Reply STOP to opt out."
    contact = make_contact()
    response = signed_post(client, INBOUND, inbound_params(contact.phone, word))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/xml")
    assert response.content.decode().endswith(
        "<Response><Message>Acme events: help at help@acme.test. Reply STOP to opt out.</Message></Response>")
    assert has_consent(contact, Channel.SMS)


def test_the_default_help_text_names_the_sender_and_stop():
    assert django_settings.DEFAULT_FROM_EMAIL in django_settings.DRIP_SMS_HELP_TEXT
    assert "Reply STOP to opt out" in django_settings.DRIP_SMS_HELP_TEXT


def test_any_other_message_waits_in_the_inbox(client, db, twilio):
    contact = make_contact()
    response = signed_post(client, INBOUND, inbound_params(contact.phone, "please stop texting me", sid="SMother1"))
    assert response.content.decode().endswith("<Response />")
    stored = InboundSms.objects.get()
    assert (stored.from_number, stored.body, stored.provider_sid, stored.kind, stored.handled) == (
        contact.phone, "please stop texting me", "SMother1", InboundSms.Kind.OTHER, False)
    assert has_consent(contact, Channel.SMS)
    signed_post(client, INBOUND, inbound_params(contact.phone, "please stop texting me", sid="SMother1"))  # a retry
    assert InboundSms.objects.count() == 1


# --- end to end with a real worker --------------------------------------------------------------

def funnel_done(registration: Registration) -> bool:
    """Every step finished and no message on its way (terminal statuses named, not "open")."""
    steps = Step.objects.filter(registration=registration)
    return steps.count() == 3 and not steps.exclude(status__in=TERMINAL_STEPS).exists() and settled(registration)


TERMINAL_STEPS = (Step.Status.DONE, Step.Status.SKIPPED, Step.Status.CANCELLED, Step.Status.FAILED)


def test_stop_then_the_next_reminder_sms_is_not_sent(worker, providers, scaled, client):
    contact = make_contact()
    registration = enroll(contact, make_event(starts_in=8))  # reminders in ~4 s and ~7.8 s
    providers.wait_for(1, kind="email")  # the welcome
    assert signed_post(client, INBOUND, inbound_params(contact.phone, " Stop ")).status_code == 200
    wait_until(lambda: funnel_done(registration))
    assert providers.messages("sms") == [] and len(providers.messages("email")) >= 2
    assert not Message.objects.filter(channel=Channel.SMS, status=Message.Status.SENT).exists()


def test_stop_then_start_and_the_reminder_sms_is_sent(worker, providers, scaled, client):
    contact = make_contact()
    registration = enroll(contact, make_event(starts_in=8))
    providers.wait_for(1, kind="email")
    signed_post(client, INBOUND, inbound_params(contact.phone, "stop"))
    signed_post(client, INBOUND, inbound_params(contact.phone, "START"))
    wait_until(lambda: funnel_done(registration))
    first = providers.messages("sms")[0]
    assert first.text.startswith("Reminder: ") and first.text.endswith(" Reply STOP to opt out.")


def test_only_the_first_sms_to_a_number_says_how_to_opt_out(worker, providers):
    contact = make_contact()
    registration = register_quietly(contact, make_event())
    for count in (1, 2):
        send_direct(contact, Channel.SMS, "reminder_24h", registration=registration)
        providers.wait_for(count, kind="sms")
        wait_until(lambda: not Message.objects.filter(status__in=[Message.Status.QUEUED, Message.Status.SENDING]).exists())
    first, second = providers.messages("sms")
    assert first.text.endswith(" Reply STOP to opt out.") and "STOP" not in second.text


def test_the_sms_asks_for_its_status_report_with_its_id_and_a_validity_period(worker, providers, settings):
    settings.PUBLIC_BASE_URL = "https://drip.example.org"
    settings.DRIP_SMS_VALIDITY_SECONDS = 900
    contact = make_contact()
    message, _ = send_direct(contact, Channel.SMS, "reminder_24h", registration=register_quietly(contact, make_event()))
    [got] = providers.wait_for(1, kind="sms")
    assert got.raw["StatusCallback"] == f"https://drip.example.org/webhooks/twilio/status/?m={message.pk}"
    assert got.raw["ValidityPeriod"] == "900"


@pytest.mark.parametrize("field,value", [
    ("From", "+1415555\n0100"), ("From", "<script>"), ("To", "+1" + "5" * 40), ("MessageSid", "SM\r\nforged"),
])
def test_a_signed_but_malformed_field_is_a_400_naming_it_and_writes_nothing(client, db, twilio, field, value):
    params = {**inbound_params("+14155550100", "STOP"), field: value}
    response = signed_post(client, INBOUND, params)
    assert response.status_code == 400 and field in response.content.decode()
    assert not InboundSms.objects.exists() and not Suppression.objects.exists()


def test_a_nul_in_a_message_is_dropped_not_a_500(client, db, twilio):
    response = signed_post(client, INBOUND, inbound_params("+14155550100", "hello\x00 there"))
    assert response.status_code == 200 and InboundSms.objects.get().body == "hello there"
