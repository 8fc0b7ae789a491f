"""Inbound in the operator's admin: the SMS inbox and its opt-out action, delivery reports on
a message's page, a contact's consent in force, and the "suppressed" filter."""
from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from drip.domain.consent import active_suppression, has_consent, record_consent
from drip.models import Channel, ConsentRecord, DeliveryReport, InboundSms, Message, Suppression
from tests.factories import make_contact


@pytest.fixture
def operator(client, db):
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


def test_record_as_opt_out_suppresses_the_number_as_the_recipients_own(operator):
    contact = make_contact()
    twin = make_contact(phone=contact.phone)
    inbound = InboundSms.objects.create(from_number=contact.phone, body="please stop texting me", provider_sid="SM1")
    page = operator.get("/admin/drip/inboundsms/")
    assert page.status_code == 200 and "please stop texting me" in page.content.decode()
    response = operator.post("/admin/drip/inboundsms/", {"action": "record_as_opt_out", "_selected_action": [inbound.pk]})
    assert response.status_code == 302
    suppression = active_suppression(Channel.SMS, contact.phone)
    assert suppression is not None
    assert (suppression.source, suppression.detail) == (Suppression.Source.RECIPIENT, f"inbound-sms:{inbound.pk}")
    assert "admin:op" in suppression.reason and "please stop texting me" in suppression.reason
    assert not has_consent(contact, Channel.SMS) and not has_consent(twin, Channel.SMS)
    inbound.refresh_from_db()
    assert (inbound.handled, inbound.opted_out, inbound.handled_by) == (True, True, "admin:op")


def test_the_message_page_shows_its_delivery_reports(operator):
    contact = make_contact()
    message = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", to=contact.email,
                                     status=Message.Status.BOUNCED, provider_message_id=str(uuid.uuid4()))
    DeliveryReport.objects.create(message=message, channel=Channel.EMAIL, kind=DeliveryReport.Kind.BOUNCED,
                                  occurred_at=timezone.now(), provider="postmark", dedupe_key="k1",
                                  detail="HardBounce; mailbox not found", applied=True)
    page = operator.get(f"/admin/drip/message/{message.pk}/change/")
    assert page.status_code == 200 and "HardBounce; mailbox not found" in page.content.decode()


def test_the_contact_page_shows_the_consent_in_force_and_its_suppressions(operator):
    contact = make_contact()
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    page = operator.get(f"/admin/drip/contact/{contact.pk}/change/").content.decode()
    suppression = active_suppression(Channel.SMS, contact.phone)
    assert suppression is not None
    assert f"sms: SUPPRESSED by {suppression.get_source_display()} (twilio:STOP)" in page
    assert "email: granted by Event API / enrollment (test)" in page
    assert f"/admin/drip/suppression/{suppression.pk}/change/" in page  # where an operator lifts it


def test_the_suppressed_filter(operator):
    stopped = make_contact(external_id="stopped")
    bounced = make_contact(external_id="bounced")
    fine = make_contact(external_id="fine")
    api_revoked = make_contact(external_id="api-revoked")
    record_consent(stopped, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    record_consent(bounced, Channel.EMAIL, False, ConsentRecord.Source.PROVIDER, detail="postmark:HardBounce")
    record_consent(api_revoked, Channel.EMAIL, False, ConsentRecord.Source.API, detail="api")  # not a suppression

    def listed(value: str) -> set[str]:
        page = operator.get(f"/admin/drip/contact/?suppressed={value}").content.decode()
        return {c.external_id for c in (stopped, bounced, fine, api_revoked) if f">{c.external_id}<" in page}

    assert listed("sms") == {"stopped"}
    assert listed("email") == {"bounced"}
    assert listed("any") == {"stopped", "bounced"}
    record_consent(stopped, Channel.SMS, True, ConsentRecord.Source.RECIPIENT, detail="twilio:START")
    assert listed("sms") == set()


def test_every_time_django_shows_says_its_zone(operator):
    """The inbox, a message's page and its delivery reports show times through Django's own
    formats (drip/formats): each carries its zone, so two alike-looking times never mean two
    zones."""
    contact = make_contact()
    at = timezone.now().replace(hour=6, minute=21)
    InboundSms.objects.create(from_number=contact.phone, body="hello?", provider_sid="SM2", received_at=at)
    message = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", to=contact.email,
                                     status=Message.Status.SENT, sent_at=at, provider_message_id=str(uuid.uuid4()))
    DeliveryReport.objects.create(message=message, channel=Channel.EMAIL, kind=DeliveryReport.Kind.DELIVERED,
                                  occurred_at=at, provider="postmark", dedupe_key="k2", detail="", applied=True)
    inbox = operator.get("/admin/drip/inboundsms/").content.decode()
    page = operator.get(f"/admin/drip/message/{message.pk}/change/").content.decode()
    assert "6:21 a.m. UTC" in inbox
    assert page.count("6:21 a.m. UTC") >= 2  # sent at, and the report's time
