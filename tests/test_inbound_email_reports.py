"""Email delivery reports: anymail's own Postmark tracking view, fed Postmark's documented
webhook payloads (https://postmarkapp.com/developer/webhooks), with and without basic auth."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from drip.domain.consent import has_consent
from drip.models import Channel, ConsentRecord, Contact, DeliveryReport, Message, Suppression
from tests.factories import enroll, make_contact, make_event
from tests.helpers import SCALE, current, settled, wait_until

URL = "/anymail/postmark/tracking/"
SECRET = "postmark:webhook-s3cret"



@pytest.fixture
def secret(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": SECRET}
    return SECRET


def post(client: Client, payload: dict[str, Any], auth: str | None = SECRET) -> Any:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    return client.post(URL, json.dumps(payload), content_type="application/json", headers=headers)


def sent_email(contact: Contact | None = None, status: str = Message.Status.SENT) -> Message:
    """A message as the sender leaves it after Postmark accepted it."""
    contact = contact or make_contact()
    return Message.objects.create(
        contact=contact, channel=Channel.EMAIL, template_type="welcome", to=contact.email, status=status,
        provider_message_id=str(uuid.uuid4()), sent_at=timezone.now(),
    )


def metadata(message: Message) -> dict[str, str]:
    return {"drip_message_id": str(message.pk)}


# --- Postmark's documented payloads (values as in the docs, ids and addresses ours) --------

def bounce(message: Message, type_: str = "HardBounce", inactive: bool = True, event_id: int = 4323372036854775807,
           record_type: str = "Bounce") -> dict[str, Any]:
    names = {"HardBounce": ("Hard bounce", 1), "SoftBounce": ("Soft bounce", 4096), "SpamComplaint": ("Spam complaint", 512)}
    name, code = names[type_]
    return {
        "RecordType": record_type, "MessageStream": "outbound", "ID": event_id, "Type": type_, "TypeCode": code,
        "Name": name, "Tag": "Test", "MessageID": message.provider_message_id, "Metadata": metadata(message),
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details", "Email": message.to, "From": "events@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": True, "Inactive": inactive,
        "CanActivate": True, "Subject": "Test subject", "Content": "<Full dump of bounce>" * 500,
    }


def spam_complaint(message: Message) -> dict[str, Any]:
    payload = bounce(message, "SpamComplaint", record_type="SpamComplaint", event_id=42)
    payload.update(Description="The subscriber explicitly marked this message as spam.", CanActivate=False)
    return payload


def delivery(message: Message, at: str = "2019-11-05T16:33:54.9070259Z") -> dict[str, Any]:
    return {
        "RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID": message.provider_message_id,
        "Recipient": message.to, "Tag": "welcome-email", "DeliveredAt": at,
        "Details": "Test delivery webhook details", "Metadata": metadata(message),
    }


def open_(message: Message, at: str = "2019-11-05T16:40:00.0000000Z", first: bool = True) -> dict[str, Any]:
    return {
        "RecordType": "Open", "MessageStream": "outbound", "FirstOpen": first,
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "WebMail", "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5)", "ReadSeconds": 5,
        "Geo": {"CountryISOCode": "RS", "Country": "Serbia", "City": "Novi Sad"},
        "MessageID": message.provider_message_id, "Metadata": metadata(message), "ReceivedAt": at,
        "Tag": "welcome-email", "Recipient": message.to,
    }


def click(message: Message) -> dict[str, Any]:
    return {
        "RecordType": "Click", "MessageStream": "outbound", "ClickLocation": "HTML",
        "Client": {"Name": "Chrome 35.0.1916.153", "Company": "Google", "Family": "Chrome"},
        "OS": {"Name": "OS X 10.7 Lion", "Company": "Apple Computer, Inc.", "Family": "OS X 10"},
        "Platform": "Desktop", "UserAgent": "Mozilla/5.0", "OriginalLink": "https://example.com/join/1",
        "Geo": {"CountryISOCode": "RS"}, "MessageID": message.provider_message_id, "Metadata": metadata(message),
        "ReceivedAt": "2017-10-25T15:21:11.9065619Z", "Tag": "welcome-email", "Recipient": message.to,
    }


def subscription_change(message: Message, suppress: bool = True, reason: str = "ManualSuppression") -> dict[str, Any]:
    return {
        "RecordType": "SubscriptionChange", "MessageID": message.provider_message_id, "ServerID": 123456,
        "MessageStream": "outbound", "ChangedAt": "2020-02-01T10:53:34.416071Z", "Recipient": message.to,
        "Origin": "Recipient", "SuppressSending": suppress, "SuppressionReason": reason if suppress else None,
        "Tag": "my-tag", "Metadata": metadata(message),
    }


# --- authentication ---------------------------------------------------------------------------

def test_a_report_without_or_with_wrong_basic_auth_is_refused(client, db, secret):
    message = sent_email()
    assert post(client, bounce(message), auth=None).status_code == 400
    assert post(client, bounce(message), auth="postmark:guess").status_code == 400
    assert not DeliveryReport.objects.exists()
    assert Message.objects.get(pk=message.pk).status == Message.Status.SENT
    assert has_consent(message.contact, Channel.EMAIL)


def test_no_webhook_secret_configured_refuses_every_report(client, db, settings):
    settings.ANYMAIL = {k: v for k, v in settings.ANYMAIL.items() if k != "WEBHOOK_SECRET"}
    message = sent_email()
    assert post(client, bounce(message), auth=None).status_code == 403
    assert post(client, bounce(message)).status_code == 403
    assert not DeliveryReport.objects.exists() and has_consent(message.contact, Channel.EMAIL)


# --- what each report does ----------------------------------------------------------------------

def test_a_hard_bounce_suppresses_the_address_for_every_contact_and_withdraws_its_mail(client, db, secret):
    message = sent_email()
    twin = make_contact(email=message.to.upper())  # the same mailbox, another contact
    waiting = Message.objects.create(contact=twin, channel=Channel.EMAIL, template_type="welcome", to=twin.email)
    assert post(client, bounce(message)).status_code == 200
    message.refresh_from_db()
    assert message.status == Message.Status.BOUNCED and "HardBounce" in message.error
    [report] = DeliveryReport.objects.all()
    assert (report.kind, report.applied, report.provider, report.provider_event_id) == (
        DeliveryReport.Kind.BOUNCED, True, "postmark", "4323372036854775807")
    assert report.occurred_at == datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC)
    assert len(report.payload) <= 4096  # the 10 KB dump is trimmed
    for contact in (message.contact, twin):
        record = current(contact, Channel.EMAIL)
        assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.PROVIDER, "postmark:HardBounce")
    waiting.refresh_from_db()
    assert (waiting.status, waiting.error) == (Message.Status.SKIPPED, "no email consent")


def test_a_soft_bounce_is_recorded_and_suppresses_nothing(client, db, secret):
    message = sent_email()
    assert post(client, bounce(message, "SoftBounce", inactive=False)).status_code == 200
    [report] = DeliveryReport.objects.all()
    assert (report.kind, report.applied) == (DeliveryReport.Kind.SOFT_BOUNCED, False)
    assert Message.objects.get(pk=message.pk).status == Message.Status.SENT
    assert has_consent(message.contact, Channel.EMAIL)


def test_a_soft_bounce_that_made_the_address_inactive_suppresses_it(client, db, secret):
    message = sent_email()
    post(client, bounce(message, "SoftBounce", inactive=True))
    assert DeliveryReport.objects.get().kind == DeliveryReport.Kind.BOUNCED
    assert not has_consent(message.contact, Channel.EMAIL)


def test_a_spam_complaint_suppresses_and_leaves_the_delivered_message_delivered(client, db, secret):
    message = sent_email(status=Message.Status.DELIVERED)
    assert post(client, spam_complaint(message)).status_code == 200
    assert DeliveryReport.objects.get().kind == DeliveryReport.Kind.COMPLAINED
    assert Message.objects.get(pk=message.pk).status == Message.Status.DELIVERED
    record = current(message.contact, Channel.EMAIL)
    assert (record.granted, record.source, record.detail) == (False, "provider", "postmark:SpamComplaint")


def test_a_delivery_marks_the_message_delivered(client, db, secret):
    message = sent_email()
    assert post(client, delivery(message)).status_code == 200
    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED
    assert message.delivered_at == datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC)


def test_opens_and_clicks_keep_the_first_time_and_every_report(client, db, secret):
    message = sent_email(status=Message.Status.DELIVERED)
    post(client, open_(message, "2019-11-05T16:40:00Z"))
    post(client, open_(message, "2019-11-06T09:00:00Z", first=False))
    post(client, click(message))
    message.refresh_from_db()
    assert message.opened_at == datetime(2019, 11, 5, 16, 40, tzinfo=UTC)
    assert message.clicked_at == datetime(2017, 10, 25, 15, 21, 11, 906561, tzinfo=UTC)
    assert message.status == Message.Status.DELIVERED
    kinds = list(DeliveryReport.objects.filter(message=message).values_list("kind", "applied"))
    assert kinds == [("clicked", True), ("opened", True), ("opened", False)]  # oldest first
    assert "https://example.com/join/1" in DeliveryReport.objects.get(kind="clicked").detail


def test_an_unsubscribe_at_the_esp_suppresses_and_a_resubscribe_there_does_not_lift_it(client, db, secret):
    message = sent_email()
    post(client, subscription_change(message, suppress=True))
    record = current(message.contact, Channel.EMAIL)
    assert (record.granted, record.source, record.detail) == (False, "provider", "postmark:ManualSuppression")
    assert DeliveryReport.objects.get().kind == DeliveryReport.Kind.UNSUBSCRIBED
    post(client, {**subscription_change(message, suppress=False), "ChangedAt": "2020-02-02T10:00:00Z"})
    assert DeliveryReport.objects.filter(kind=DeliveryReport.Kind.SUBSCRIBED).count() == 1
    assert not has_consent(message.contact, Channel.EMAIL)  # only the recipient or an operator lifts it


def test_a_subscription_change_for_a_hard_bounce_suppresses(client, db, secret):
    message = sent_email()
    post(client, subscription_change(message, reason="HardBounce"))
    assert not has_consent(message.contact, Channel.EMAIL)


def test_a_repeated_report_changes_nothing(client, db, secret):
    message = sent_email()
    for _ in range(3):
        assert post(client, bounce(message)).status_code == 200
        assert post(client, delivery(message)).status_code == 200
    assert DeliveryReport.objects.count() == 2
    assert Suppression.objects.filter(channel=Channel.EMAIL).count() == 1


def test_a_delivery_for_an_unknown_message_is_answered_200_and_stores_nothing(client, db, secret):
    message = sent_email()
    payload = {**delivery(message), "MessageID": str(uuid.uuid4()), "Metadata": {}}
    assert post(client, payload).status_code == 200
    assert not DeliveryReport.objects.exists() and has_consent(message.contact, Channel.EMAIL)


def test_a_hard_bounce_for_an_unknown_message_still_suppresses_the_address_it_names(client, db, secret):
    """The ESP is the authority on its own reports: it has deactivated the address for every
    sender on the server, whether or not Drip knows the message (sent before a restore, by
    another tool on the same server...)."""
    message = sent_email()
    twin = make_contact(email=message.contact.email.upper())
    payload = {**bounce(message), "MessageID": str(uuid.uuid4()), "Metadata": {}}
    assert post(client, payload).status_code == 200
    assert not DeliveryReport.objects.exists()
    assert not has_consent(message.contact, Channel.EMAIL) and not has_consent(twin, Channel.EMAIL)
    assert current(twin, Channel.EMAIL).source == "provider"


def test_the_metadata_finds_the_message_when_the_provider_id_does_not(client, db, secret):
    message = sent_email()
    post(client, {**delivery(message), "MessageID": str(uuid.uuid4())})
    assert Message.objects.get(pk=message.pk).status == Message.Status.DELIVERED


def test_reports_never_move_a_message_backwards(client, db, secret):
    message = sent_email()
    post(client, delivery(message))
    post(client, bounce(message))  # a bounce after delivery: still a suppression
    message.refresh_from_db()
    assert message.status == Message.Status.DELIVERED
    assert not has_consent(message.contact, Channel.EMAIL)
    assert list(DeliveryReport.objects.order_by("id").values_list("kind", "applied")) == [("delivered", True), ("bounced", False)]


# --- end to end -------------------------------------------------------------------------------

def test_a_bounce_between_planning_and_sending_stops_the_next_email(worker, providers, settings, client):
    settings.DRIP_TIME_SCALE = SCALE
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": SECRET}
    registration = enroll(make_contact(), make_event(starts_in=6))  # reminders in ~2 s and ~5.8 s
    [welcome] = providers.wait_for(1, kind="email")
    message = Message.objects.get(provider_message_id=welcome.provider_id)
    assert welcome.raw["Metadata"] == {"drip_message_id": str(message.pk)}  # what Postmark sends back
    payload = {**bounce(message), "MessageID": welcome.provider_id, "Metadata": welcome.raw["Metadata"]}
    assert post(client, payload).status_code == 200
    wait_until(lambda: settled(registration))
    assert [r.kind for r in providers.messages()] == ["email", "sms", "sms"]
    assert set(Message.objects.filter(channel=Channel.EMAIL).exclude(pk=message.pk).values_list("status", flat=True)) == {
        Message.Status.SKIPPED}



@pytest.mark.parametrize("body", ["garbage{", "[1]", '"a string"', ""])
def test_a_malformed_report_is_a_400_and_writes_nothing(client, db, secret, body):
    message = sent_email()
    headers = {"Authorization": "Basic " + base64.b64encode(SECRET.encode()).decode()}
    response = client.post(URL, body, content_type="application/json", headers=headers)
    assert response.status_code == 400
    assert DeliveryReport.objects.count() == 0
    message.refresh_from_db()
    assert message.status == Message.Status.SENT
