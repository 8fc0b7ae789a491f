"""drip.delivery.sender.send_batch in-process, with a recording transport in place of the provider
clients (tests/recording.py): every outcome of an attempt, on the Message row and in what
the transport was handed. No worker; the `db` fixture keeps tasks published on commit (a
requeue, a hand-back) inside the test's transaction, so they never reach a broker. The two
tests that check what is published run the callbacks, which needs the Redis `make test`
starts (tests/test_sender.py has the real providers over HTTP)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
import time_machine
from anymail.exceptions import AnymailRecipientsRefused
from anymail.message import AnymailMessage, AnymailRecipientStatus
from django.db import connection
from django.utils import timezone
from twilio.base.exceptions import TwilioRestException

from drip.delivery.channels import TransportError
from drip.delivery.rendering import Rendered
from drip.delivery.sender import send_batch
from drip.delivery.sms import GSM7, UCS2, sms_segments
from drip.domain.consent import has_consent
from drip.engine import services
from drip.engine.direct import send_direct
from drip.engine.services import run_steps_now
from drip.engine.steps import run_step_batch
from drip.models import Channel, ConsentRecord, Contact, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event, register_quietly
from tests.helpers import current
from tests.recording import Call

TWILIO_URI = "/2010-04-01/Accounts/ACtest/Messages.json"


def direct(channel: str = Channel.EMAIL, template: str = "reminder_24h", contact: Contact | None = None,
           registration: Registration | None = None, **contact_fields: Any) -> Message:
    """A direct send about a registration, queued as the API queues it."""
    contact = contact or make_contact(**contact_fields)
    registration = registration or register_quietly(contact, make_event(starts_in=3600 * 48))
    message, _ = send_direct(contact, channel, template, registration=registration, step_type="manual")
    return message


def funnel_messages(registration: Registration, key: str) -> list[Message]:
    """The step run now (the operator's "run now") and its messages created by the step
    runner, as a step task does it."""
    steps = Step.objects.filter(registration=registration, key=key, status__in=Step.OPEN)
    run_steps_now(steps)
    run_step_batch(list(Step.objects.filter(registration=registration, key=key).values_list("pk", flat=True)))
    return list(Message.objects.filter(step__registration=registration, step__key=key).order_by("channel"))


def fresh(message: Message) -> Message:
    message.refresh_from_db()
    return message


def twilio_error(status: int, code: int, msg: str) -> TwilioRestException:
    return TwilioRestException(status, TWILIO_URI, msg=msg, code=code, method="POST")


def later_than(message: Message) -> datetime:
    """Just past the message's retry backoff."""
    return message.next_attempt_at + timedelta(seconds=2)


def test_a_sent_message_records_the_provider_id_and_what_was_sent(db, recording):
    message = direct(Channel.EMAIL, first_name="Zoé", timezone="Europe/Paris")
    send_batch([message.pk])
    message = fresh(message)
    [call] = recording.calls
    assert call == Call(message.pk, Channel.EMAIL, message.contact.email, f"Tomorrow: {message.registration.event.title}", call.text)
    assert "Hi Zoé," in call.text and "CET" in call.text
    assert (message.status, message.provider_message_id, message.attempts, message.error) == (Message.Status.SENT, "rec-1", 1, "")
    assert message.sent_at is not None and message.sending_at is not None and message.sending_at <= message.sent_at
    assert (message.to, message.subject, message.body) == (call.to, call.subject, call.text)
    assert "<p>Hi Zoé,</p>" in message.html
    assert (message.sms_encoding, message.sms_segments) == ("", None)


def test_it_sends_to_the_address_the_contact_has_now(db, recording):
    message = direct(Channel.EMAIL)
    Contact.objects.filter(pk=message.contact_id).update(email="moved@example.com")
    send_batch([message.pk])
    assert recording.calls[0].to == "moved@example.com" and fresh(message).to == "moved@example.com"


def test_a_transient_error_requeues_with_a_backoff_and_the_retry_sends(db, recording, django_capture_on_commit_callbacks):
    message = direct(Channel.EMAIL)
    recording.fail_next(requests.ConnectionError("connection refused"))
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.attempts, message.error) == (Message.Status.QUEUED, 1, "provider unreachable: connection refused")
    # retry_delay(1): DRIP_RETRY_BASE_DELAY (10 s) with jitter, 5 to 10 s.
    assert timedelta(seconds=4.9) < message.next_attempt_at - before < timedelta(seconds=10.5)
    assert message.sending_at is None and message.rate_slot_at is None
    assert len(recording.calls) == 1 and len(callbacks) == 1  # its countdown task, on commit
    send_batch([message.pk])  # a duplicate task before the backoff ends claims nothing
    assert len(recording.calls) == 1 and fresh(message).status == Message.Status.QUEUED
    with time_machine.travel(later_than(message), tick=False):
        send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.attempts, message.error) == (Message.Status.SENT, 2, "")
    assert recording.ids() == [message.pk, message.pk]


def test_a_requeue_publishes_its_send_task_for_the_retry_time(db, recording, published, django_capture_on_commit_callbacks):
    message = direct(Channel.SMS)
    recording.fail_next(twilio_error(503, 20503, "Service Unavailable"))
    with django_capture_on_commit_callbacks(execute=True):  # publishes: needs the broker make test starts
        send_batch([message.pk])
    message = fresh(message)
    assert message.error == "twilio 503 error 20503: Service Unavailable"
    assert published == [("drip.tasks.send_messages", [[message.pk]], message.next_attempt_at.isoformat())]


def test_a_permanent_error_fails_at_once(db, recording):
    message = direct(Channel.SMS)
    recording.fail_next(twilio_error(400, 21211, "The 'To' number is not a valid phone number."))
    send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    assert message.error == "twilio 400 error 21211: The 'To' number is not a valid phone number. (permanent)"
    assert has_consent(message.contact, Channel.SMS)  # a bad number is not an opt-out
    send_batch([message.pk])
    assert len(recording.calls) == 1


def test_a_transient_error_on_the_last_attempt_gives_up(db, recording, settings):
    settings.DRIP_SEND_MAX_ATTEMPTS = 2
    message = direct(Channel.EMAIL)
    recording.fail_next(requests.Timeout("read timed out"), times=2)
    send_batch([message.pk])
    with time_machine.travel(later_than(fresh(message)), tick=False):
        send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.attempts) == (Message.Status.FAILED, 2)
    assert message.error == "provider unreachable: read timed out (gave up after 2 attempts)"
    assert len(recording.calls) == 2


def test_an_opt_out_from_twilio_revokes_consent_and_withdraws_the_contacts_other_sms(db, recording):
    message = direct(Channel.SMS)
    contact, registration = message.contact, message.registration
    other_sms = direct(Channel.SMS, "reminder_1h", contact=contact, registration=registration)
    email = direct(Channel.EMAIL, contact=contact, registration=registration)
    recording.fail_next(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
    send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.error) == (
        Message.Status.FAILED, "twilio 400 error 21610: Attempt to send to unsubscribed recipient (permanent)",
    )
    assert not has_consent(contact, Channel.SMS) and has_consent(contact, Channel.EMAIL)
    record = current(contact, Channel.SMS)
    assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.PROVIDER, "twilio:21610")
    assert "21610" in record.reason
    assert (fresh(other_sms).status, other_sms.error) == (Message.Status.SKIPPED, "no sms consent")
    assert fresh(email).status == Message.Status.QUEUED


def test_an_esp_rejection_revokes_email_consent_for_the_rest_of_the_batch(db, recording):
    first = direct(Channel.EMAIL)
    second = direct(Channel.EMAIL, "reminder_1h", contact=first.contact, registration=first.registration)
    refused = AnymailMessage(to=[first.contact.email])
    refused.anymail_status.set_recipient_status({first.contact.email: AnymailRecipientStatus(message_id=None, status="rejected")})
    recording.fail_next(AnymailRecipientsRefused(email_message=refused))
    send_batch([first.pk, second.pk])
    assert fresh(first).status == Message.Status.FAILED and "(permanent)" in first.error
    assert (fresh(second).status, second.error) == (Message.Status.SKIPPED, "no email consent")
    assert recording.ids() == [first.pk]
    record = current(first.contact, Channel.EMAIL)
    assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.PROVIDER, "esp:rejected")


def test_a_send_time_opt_out_suppresses_every_contact_at_the_number(db, recording):
    message = direct(Channel.SMS, phone="+14155550999")
    twin = make_contact(phone="+14155550999")
    twin_sms = direct(Channel.SMS, contact=twin)
    recording.fail_next(twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
    send_batch([message.pk])
    assert not has_consent(message.contact, Channel.SMS)
    assert not has_consent(twin, Channel.SMS)
    assert (fresh(twin_sms).status, twin_sms.error) == (Message.Status.SKIPPED, "no sms consent")


def test_a_transport_error_raised_directly_is_handled_like_a_classified_one(db, recording):
    message = direct(Channel.EMAIL)
    recording.fail_next(TransportError("mailbox full", permanent=True))
    send_batch([message.pk])
    assert (fresh(message).status, message.error) == (Message.Status.FAILED, "mailbox full (permanent)")


def test_a_message_already_sent_is_not_sent_again(db, recording):
    message = direct(Channel.EMAIL)
    send_batch([message.pk])
    send_batch([message.pk])  # a duplicate task
    message = fresh(message)
    assert (message.status, message.attempts) == (Message.Status.SENT, 1)
    assert recording.ids() == [message.pk]


def test_a_withdrawn_message_is_not_sent(db, recording):
    message = direct(Channel.EMAIL)
    services.cancel_registration(message.registration)
    send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.error, message.attempts) == (Message.Status.SKIPPED, "registration cancelled", 0)
    assert recording.calls == []


def test_no_consent_at_send_time_skips_without_a_call(db, recording):
    message = direct(Channel.SMS, sms_consent=False)
    send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.error) == (Message.Status.SKIPPED, "no sms consent")
    assert message.sending_at is None and recording.calls == []


def test_a_missing_template_variable_fails_once_without_a_call(db, recording):
    contact = make_contact()
    message, _ = send_direct(contact, Channel.EMAIL, "welcome")  # no registration: no event to show
    send_batch([message.pk])
    send_batch([message.pk])
    message = fresh(message)
    assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
    assert message.error == "template welcome (email): 'None' has no attribute 'title'"
    assert recording.calls == []


def test_expiry_is_checked_again_right_before_the_provider_call(db, recording, monkeypatch):
    with time_machine.travel(timezone.now(), tick=False) as clock:
        registration = enroll(make_contact(), make_event(starts_in=2 * 3600))
        start = registration.event.starts_at
        email, sms = funnel_messages(registration, "reminder_1h")
        assert (email.channel, sms.channel) == (Channel.EMAIL, Channel.SMS)

        def slow_slot(channel: str) -> float:
            clock.shift(timedelta(hours=3))  # the wait for a send slot outlasted the event's start
            return 0.0

        monkeypatch.setattr("drip.delivery.sender.reserve_send_slot", slow_slot)
        send_batch([email.pk])
    email = fresh(email)
    # Not "(event start)": the first check (drip.domain.policy) passed; this is the sender's own.
    assert (email.status, email.error) == (Message.Status.SKIPPED, f"expired at {start.isoformat()}")
    assert email.sending_at is not None and email.subject  # what would have been sent is on record
    assert recording.calls == []


def test_an_sms_records_its_encoding_and_segments(db, recording):
    plain = direct(Channel.SMS)
    contact = make_contact()
    polish = direct(Channel.SMS, contact=contact, registration=register_quietly(contact, make_event(title="Zażółć gęślą jaźń")))
    send_batch([plain.pk, polish.pk])
    plain_call, polish_call = recording.calls
    assert (fresh(plain).sms_encoding, plain.sms_segments) == (GSM7, 1) == sms_segments(plain_call.text)
    assert plain_call.text.startswith("Reminder: ") and plain_call.text.endswith("Reply STOP to opt out.")
    encoding, segments = sms_segments(polish_call.text)
    assert encoding == UCS2 and segments >= 2
    assert (fresh(polish).sms_encoding, polish.sms_segments) == (UCS2, segments)
    assert (plain_call.subject, plain.subject) == ("", "")


def test_an_unexpected_error_sends_what_came_before_and_hands_back_the_rest(db, recording, django_capture_on_commit_callbacks):
    messages = [direct(Channel.EMAIL) for _ in range(4)]
    ids = [m.pk for m in messages]
    recording.fail_for(ids[1], RuntimeError("transport bug"), classified=False)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=False) as callbacks, pytest.raises(RuntimeError, match="transport bug"):
        send_batch(ids)
    first, broken, *rest = (fresh(m) for m in messages)
    assert (first.status, first.attempts) == (Message.Status.SENT, 1)
    # Its call began (sending_at is set): only the reconciler may decide it, after DRIP_SENDING_TIMEOUT.
    assert (broken.status, broken.attempts) == (Message.Status.SENDING, 1) and broken.sending_at is not None
    for message in rest:
        assert (message.status, message.attempts, message.sending_at) == (Message.Status.QUEUED, 0, None)
        assert before <= message.next_attempt_at <= timezone.now()
    assert recording.ids() == ids[:2]
    assert len(callbacks) == 1  # one send task for the handed-back rest


def test_a_slow_provider_hands_the_rest_of_the_batch_back_in_pieces(db, recording, settings, published,
                                                                     django_capture_on_commit_callbacks):
    settings.DRIP_SEND_BATCH_SECONDS = 0.05
    recording.delay = 0.06  # each call takes longer than the batch's whole budget
    messages = [direct(Channel.EMAIL) for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True):  # publishes: needs the broker make test starts
        send_batch([m.pk for m in messages])
    first, *rest = (fresh(m) for m in messages)
    assert first.status == Message.Status.SENT and recording.ids() == [first.pk]
    assert {(m.status, m.attempts) for m in rest} == {(Message.Status.QUEUED, 0)}
    # Pieces of what this task got through in its budget (one): idle workers share the rest.
    assert published == [("drip.tasks.send_messages", [[m.pk]], None) for m in rest]


def test_a_batch_costs_a_bounded_number_of_queries(db, recording, django_assert_max_num_queries):
    ids = [direct(Channel.EMAIL).pk for _ in range(10)]
    # Measured: 23 = 3 per batch (claim, load, consent) + 2 per message (the write before the
    # provider call, and the outcome). The bound is that plus 9: any extra query per message
    # (a lazy load of its contact or event, a consent read of its own) costs 10 and fails it.
    with django_assert_max_num_queries(3 + 2 * 10 + 9):
        send_batch(ids)
    assert set(Message.objects.values_list("status", flat=True)) == {Message.Status.SENT}
    assert len(recording.calls) == 10


def test_what_a_transport_takes_together_goes_in_one_call_and_each_has_its_own_outcome(db, recording):
    recording.batch_max = 10
    messages = [direct(Channel.EMAIL) for _ in range(4)]
    ids = [m.pk for m in messages]
    recording.fail_for(ids[1], TransportError("recipient refused: postmark error 406", permanent=True, revoke_consent=True))
    recording.fail_for(ids[2], requests.ConnectionError("connection reset"))
    send_batch(ids)
    assert recording.requests == [ids]
    sent, refused, retried, last = (fresh(m) for m in messages)
    assert [(m.status, m.provider_message_id) for m in (sent, last)] == [(Message.Status.SENT, "rec-1"), (Message.Status.SENT, "rec-4")]
    assert (refused.status, refused.error) == (Message.Status.FAILED, "recipient refused: postmark error 406 (permanent)")
    assert not has_consent(refused.contact, Channel.EMAIL) and has_consent(sent.contact, Channel.EMAIL)
    assert (retried.status, retried.attempts, retried.error) == (Message.Status.QUEUED, 1, "provider unreachable: connection reset")


def test_a_wait_for_a_rate_slot_sends_what_is_ready_first(db, recording, monkeypatch):
    recording.batch_max = 10
    ids = [direct(Channel.EMAIL).pk for _ in range(3)]
    waits = iter([0.0, 0.05, 0.0])
    monkeypatch.setattr("drip.delivery.sender.reserve_send_slot", lambda channel: next(waits))
    send_batch(ids)
    # The second message's slot is 50 ms away: the first goes now, not 50 ms late.
    assert recording.requests == [ids[:1], ids[1:]]
    assert set(Message.objects.values_list("status", flat=True)) == {Message.Status.SENT}


def test_expiry_is_checked_for_each_message_right_before_the_call_they_share(db, recording, monkeypatch):
    recording.batch_max = 10
    with time_machine.travel(timezone.now(), tick=False) as clock:
        event = make_event(starts_in=2 * 3600)
        registrations = [enroll(make_contact(), event) for _ in range(2)]
        emails = [funnel_messages(r, "reminder_1h")[0] for r in registrations]
        slots = iter([0.0, 3 * 3600.0])

        def slot(channel: str) -> float:
            wait = next(slots)
            clock.shift(timedelta(seconds=wait))  # the second slot came after the event's start
            return 0.0

        monkeypatch.setattr("drip.delivery.sender.reserve_send_slot", slot)
        send_batch([e.pk for e in emails])
    # The first was ready before the start, but its call (shared with the second) came after.
    assert {(fresh(e).status, e.error) for e in emails} == {(Message.Status.SKIPPED, f"expired at {event.starts_at.isoformat()}")}
    assert recording.calls == [] and recording.requests == []


def test_a_batched_call_records_its_calls_and_outcomes_in_one_write_each(db, recording, django_assert_max_num_queries):
    recording.batch_max = 10
    ids = [direct(Channel.EMAIL).pk for _ in range(10)]
    # 4 per batch (claim, load, consent records, suppressions), one write before the call for
    # the ten, one for their outcomes (one per message where the database has no arrays to update from).
    writes = 1 if connection.vendor == "postgresql" else 10
    with django_assert_max_num_queries(4 + writes + writes):
        send_batch(ids)
    assert recording.requests == [ids]
    assert dict(Message.objects.values_list("id", "provider_message_id")) == {pk: f"rec-{n}" for n, pk in enumerate(ids, 1)}


def test_a_message_taken_back_while_its_batch_was_prepared_is_left_out(db, recording, monkeypatch):
    """The soak's duplicates: a batch slowed down while it was prepared, and the reconciler
    took its first message back meanwhile (another task will send it). The guarded write,
    made for the whole request right before it, must leave that message out."""
    from drip.delivery import sender

    recording.batch_max = 3
    ids = [direct(Channel.EMAIL).pk for _ in range(3)]
    rendering = sender.render_message

    def reconciler_meanwhile(message: Message, *args: Any) -> Any:
        if message.id == ids[2]:  # the batch is slow: its first message is taken back
            now = timezone.now()
            assert Message.objects.filter(id=ids[0]).recover_lost_claims(now, now) == 1
        return rendering(message, *args)

    monkeypatch.setattr(sender, "render_message", reconciler_meanwhile)
    send_batch(ids)
    assert recording.requests == [ids[1:]]
    first = Message.objects.get(pk=ids[0])
    assert (first.status, first.sending_at, first.lost_claims) == (Message.Status.QUEUED, None, 1)
    assert Message.objects.filter(id__in=ids[1:], status=Message.Status.SENT).count() == 2


def test_a_message_handed_to_verification_is_never_recorded_again(db, recording):
    """A call recorded and handed to verification (the reconciler's DRIP_SENDING_TIMEOUT)
    belongs to the lookup: the guarded write leaves it out whatever else matches."""
    from drip.delivery import sender

    message = direct(Channel.EMAIL)
    now = timezone.now()
    Message.objects.filter(pk=message.pk).claim("tok", now)
    Message.objects.filter(pk=message.pk).update(verify_at=now)
    message = Message.objects.get(pk=message.pk)
    ready = sender._Ready(message, Rendered("s", "t", ""), sender.message_log(message), {"to": message.to})
    assert sender._record_calls([ready]) == [] and fresh(message).sending_at is None
