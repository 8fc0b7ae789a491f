"""send_message against the real anymail Postmark backend and the real twilio client,
both talking HTTP to the loopback stub: what the provider receives, and what each class
of provider error does to a Message."""
from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from drip.delivery.sms import GSM7, UCS2, sms_segments
from drip.domain.consent import has_consent
from drip.engine.direct import send_direct
from drip.models import Channel, ConsentRecord, Message
from drip.support.errors import FieldError
from drip.tasks import send_messages
from tests.factories import make_contact, make_event, register_quietly
from tests.helpers import current, wait_until

FINAL = {Message.Status.SENT, Message.Status.FAILED, Message.Status.SKIPPED}


def finished(message: Message, timeout: float = 20) -> Message:
    wait_until(lambda: Message.objects.get(pk=message.pk).status in FINAL, timeout=timeout)
    message.refresh_from_db()
    return message


def direct(channel: str = Channel.EMAIL, template: str = "reminder_24h", **contact_fields: Any) -> Message:
    contact = make_contact(**contact_fields)
    registration = register_quietly(contact, make_event(starts_in=3600 * 48))
    message, _ = send_direct(contact, channel, template, registration=registration, step_type="manual")
    return message


def test_the_provider_receives_the_email_as_rendered(worker, providers):
    message = finished(direct(Channel.EMAIL, timezone="Europe/Paris", first_name="Zoé"))
    [got] = providers.messages("email")
    assert message.status == Message.Status.SENT and message.provider_message_id == got.provider_id
    assert got.to == message.contact.email
    assert got.raw["From"] == "events@example.com"
    assert got.subject == f"Tomorrow: {message.registration.event.title}"
    assert "Hi Zoé," in got.text and "CET" in got.text  # the contact's zone, not the event's
    assert "<p>Hi Zoé,</p>" in got.html
    assert got.headers["X-Drip-Message-Id"] == str(message.pk)
    assert message.attempts == 1 and message.sent_at is not None


def test_the_provider_receives_the_sms_with_a_status_callback(worker, providers, settings):
    settings.PUBLIC_BASE_URL = "https://drip.example.org"
    message = finished(direct(Channel.SMS))
    [got] = providers.messages("sms")
    assert got.to == message.contact.phone
    assert got.raw["From"] == "+15005550006"
    assert got.raw["StatusCallback"] == f"https://drip.example.org/webhooks/twilio/status/?m={message.pk}"
    assert got.text.startswith("Reminder: ")
    assert message.provider_message_id == got.provider_id and message.provider_message_id.startswith("SM")
    assert (message.sms_encoding, message.sms_segments) == (GSM7, 1)


def test_a_messaging_service_replaces_the_from_number(worker, providers, settings):
    settings.TWILIO_MESSAGING_SERVICE_SID = "MG0123"
    finished(direct(Channel.SMS))
    [got] = providers.messages("sms")
    assert got.raw["MessagingServiceSid"] == "MG0123" and "From" not in got.raw


def test_a_503_then_200_is_one_delivery_after_a_retry(worker, providers):
    providers.fail_next("email", 503)
    message = finished(direct())
    assert message.status == Message.Status.SENT
    assert message.attempts == 2
    assert len(providers.messages("email")) == 1


def test_a_429_from_twilio_is_retried(worker, providers):
    providers.fail_next("sms", 429, {"code": 20429, "message": "Too Many Requests", "status": 429})
    message = finished(direct(Channel.SMS))
    assert (message.status, message.attempts) == (Message.Status.SENT, 2)


@pytest.mark.parametrize("status,body", [
    (400, {"ErrorCode": 300, "Message": "Invalid 'To' address: '{to}'."}),
    (422, {"ErrorCode": 300, "Message": "Invalid 'To' address: '{to}'."}),
    (422, {"ErrorCode": 406, "Message": "You tried to send to a recipient that has been marked as inactive.\n Found inactive addresses: {to}.\n Inactive recipients are ones that have generated a hard bounce or a spam complaint. "}),
])
def test_an_invalid_recipient_fails_at_once(worker, providers, status, body):
    providers.fail_next("email", status, body)
    message = finished(direct())
    assert message.status == Message.Status.FAILED
    assert message.attempts == 1
    assert "(permanent)" in message.error
    assert providers.messages() == []
    # The ESP's own suppression (406 inactive) becomes ours; a typo in an address does not.
    assert has_consent(message.contact, Channel.EMAIL) is (body["ErrorCode"] != 406)


@pytest.mark.parametrize("code,words", [(21211, "invalid"), (21614, "not a mobile"), (21610, "unsubscribed")])
def test_permanent_twilio_errors_fail_at_once(worker, providers, code, words):
    providers.fail_next("sms", 400, {"code": code, "message": f"The number is {words}", "status": 400})
    message = finished(direct(Channel.SMS))
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    assert f"error {code}" in message.error and "(permanent)" in message.error
    opted_out = code == 21610
    assert has_consent(message.contact, Channel.SMS) is not opted_out
    if opted_out:
        record = current(message.contact, Channel.SMS)
        assert (record.source, record.detail, record.granted) == (ConsentRecord.Source.PROVIDER, "twilio:21610", False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_retried_up_to_the_limit_then_failed(worker, providers, settings):
    settings.DRIP_SEND_MAX_ATTEMPTS = 3
    settings.DRIP_RETRY_BASE_DELAY = 0.1
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": f"http://127.0.0.1:{closed_port()}/"}
    message = finished(direct())
    assert message.status == Message.Status.FAILED
    assert message.attempts == 3
    assert "gave up after 3 attempts" in message.error and "unreachable" in message.error


def test_a_missing_variable_fails_the_message_once_with_the_reason(worker, providers):
    contact = make_contact()
    message, _ = send_direct(contact, Channel.EMAIL, "welcome")  # no registration: no event to show
    message = finished(message)
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    assert message.error == "template welcome (email): 'None' has no attribute 'title'"


def test_no_consent_at_send_time_skips_with_the_reason(worker, providers):
    message = finished(direct(Channel.SMS, sms_consent=False))
    assert (message.status, message.error) == (Message.Status.SKIPPED, "no sms consent")
    assert providers.messages() == []


def test_a_direct_send_with_a_key_and_a_duplicate_task_send_once(worker, providers):
    contact = make_contact()
    registration = register_quietly(contact, make_event())
    first, created = send_direct(contact, Channel.EMAIL, "resources", registration, idempotency_key="k-1")
    again, created_again = send_direct(contact, Channel.EMAIL, "resources", registration, idempotency_key="k-1")
    assert created and not created_again and first.pk == again.pk
    send_messages.apply_async([[first.pk]], queue=first.channel)
    send_messages.apply_async([[first.pk]], queue=first.channel)
    finished(first)
    time.sleep(0.5)
    assert len(providers.messages()) == 1


def test_a_direct_send_names_the_bad_field(db):
    contact = make_contact()
    with pytest.raises(FieldError) as unknown:
        send_direct(contact, Channel.EMAIL, "no_such_template")
    assert unknown.value.field == "templateType"
    with pytest.raises(FieldError) as no_sms:
        send_direct(contact, Channel.SMS, "welcome")
    assert no_sms.value.field == "templateType" and "no sms template" in str(no_sms.value)
    with pytest.raises(FieldError) as channel:
        send_direct(contact, "fax", "welcome")
    assert channel.value.field == "channel"
    assert not Message.objects.exists()


def test_sms_length_counts_encoding_and_segments():
    assert sms_segments("a" * 160) == (GSM7, 1)
    assert sms_segments("a" * 161) == (GSM7, 2)
    assert sms_segments("[" * 80) == (GSM7, 1)  # extension characters take two septets
    assert sms_segments("[" * 81) == (GSM7, 2)
    assert sms_segments("é" * 160) == (GSM7, 1)  # é is in the GSM-7 basic set
    assert sms_segments("ł" * 70) == (UCS2, 1)
    assert sms_segments("ł" * 71) == (UCS2, 2)
    assert sms_segments("🎉" * 35) == (UCS2, 1)  # outside the BMP: two UCS-2 units each
    assert sms_segments("a" * 306) == (GSM7, 2) and sms_segments("a" * 307) == (GSM7, 3)


def test_a_send_costs_a_constant_number_of_queries(transactional_db, providers, django_assert_max_num_queries):
    from drip.delivery.sender import send_batch
    from drip.engine.steps import run_step_batch
    from drip.models import Step
    from tests.factories import enroll

    registration = enroll(make_contact(), make_event(starts_in=3600 * 48))
    step = Step.objects.get(registration=registration, key="welcome")
    Step.objects.filter(pk=step.pk).update(status=Step.Status.ENQUEUED)
    run_step_batch([step.pk])
    message = Message.objects.get(step=step)
    with django_assert_max_num_queries(6):
        send_batch([message.pk])
    message.refresh_from_db()
    assert message.status == Message.Status.SENT
    from tests.helpers import flush_broker

    flush_broker()


def test_a_key_reused_for_a_different_message_is_refused(db, django_capture_on_commit_callbacks):
    contact = make_contact()
    registration = register_quietly(contact, make_event())
    with django_capture_on_commit_callbacks(execute=False):
        first, _ = send_direct(contact, Channel.EMAIL, "resources", registration, idempotency_key="k-2")
    with pytest.raises(FieldError) as reused:
        send_direct(contact, Channel.SMS, "reengagement", registration, idempotency_key="k-2")
    assert reused.value.field == "idempotencyKey" and f"(id {first.pk})" in str(reused.value)
    assert Message.objects.count() == 1
