"""No "outcome unknown": a send whose outcome is unknown (a read timeout after the request
left, a connection dropped mid-call, a worker killed in the call) is looked up at the
provider and ends sent (it arrived), sent again (it did not), or failed "outcome unknown"
only when the provider cannot be asked. Real components: a Celery worker thread, the real
anymail Postmark backend and twilio client over HTTP to the loopback stub, which answers
the lookups from what it actually recorded."""
from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import requests
from django.utils import timezone
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from drip.delivery.channels import Lookup, classify, transport_for
from drip.delivery.channels.postmark import parse_postmark_search
from drip.delivery.channels.twilio_sms import match_twilio_messages
from drip.delivery.rendering import render_message
from drip.engine.direct import send_direct
from drip.models import Channel, Message
from drip.tasks import verify_messages
from tests.factories import make_contact, make_event, register_quietly
from tests.helpers import wait_until

FINAL = {Message.Status.SENT, Message.Status.FAILED, Message.Status.SKIPPED}


@pytest.fixture
def quick(settings, providers):
    """A client timeout of a second, and verification in a few seconds of real time."""
    settings.DRIP_PROVIDER_TIMEOUT = 1.0
    settings.DRIP_VERIFY_DELAY = 0.3
    settings.DRIP_VERIFY_NOT_FOUND_AFTER = 2.5
    settings.DRIP_SENDING_TIMEOUT = 3.0
    providers.hang_after_accept = 3.0
    return settings


def finished(message: Message, timeout: float = 20) -> Message:
    wait_until(lambda: Message.objects.get(pk=message.pk).status in FINAL, timeout=timeout)
    message.refresh_from_db()
    return message


def direct(channel: str) -> Message:
    contact = make_contact()
    registration = register_quietly(contact, make_event(starts_in=3600 * 48))
    message, _ = send_direct(contact, channel, "reminder_24h", registration=registration, step_type="manual")
    return message


KIND = {Channel.EMAIL: "email", Channel.SMS: "sms"}


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
@pytest.mark.parametrize("mode", ["accept_then_hang", "accept_then_drop"])
def test_a_send_the_provider_accepted_without_answering_ends_sent_once(worker, providers, quick, channel, mode):
    providers.misbehave(KIND[channel], mode)
    message = finished(direct(channel))
    [got] = providers.messages(KIND[channel])
    assert (message.status, message.provider_message_id) == (Message.Status.SENT, got.provider_id)
    assert message.attempts == 1 and message.error == "" and message.verify_at is None
    assert message.sent_at == message.sending_at  # accepted at the call, not at the lookup
    assert providers.lookups, "the provider was asked"
    time.sleep(0.5)
    assert len(providers.messages()) == 1


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
def test_a_send_the_provider_never_received_is_sent_again_once_not_found(worker, providers, quick, channel):
    providers.misbehave(KIND[channel], "drop")  # the connection closes before the request is read
    message = direct(channel)
    # Verifying first: "not found" is not believed before DRIP_VERIFY_NOT_FOUND_AFTER.
    wait_until(lambda: Message.objects.get(pk=message.pk).verify_at is not None, timeout=10)
    message.refresh_from_db()
    assert message.status == Message.Status.SENDING and message.verify_at is not None  # verifying
    assert message.error.startswith("no answer from the provider")  # why, in words; the state is in verify_at
    message = finished(message)
    [got] = providers.messages(KIND[channel])
    assert (message.status, message.provider_message_id, message.attempts) == (Message.Status.SENT, got.provider_id, 2)
    time.sleep(0.5)
    assert len(providers.messages()) == 1


def interrupted(channel: str, reached_provider: bool) -> Message:
    """A message as a worker killed during its provider call leaves it: claimed, what it
    sends recorded, `sending_at` long past, status still `sending`. When `reached_provider`,
    the call itself went out (the real transport, to the stub) before the worker died."""
    contact = make_contact()
    registration = register_quietly(contact, make_event(starts_in=3600 * 48))
    message = Message.objects.create(contact=contact, registration=registration, channel=channel, template_type="reminder_24h")
    rendered = render_message(message)
    message.to = contact.address_for(channel)
    message.subject, message.body, message.html = rendered.subject, rendered.text, rendered.html
    message.sending_at = timezone.now() - timedelta(seconds=30)
    message.status, message.claim_token, message.attempts = Message.Status.SENDING, "dead-worker", 1
    message.save()
    if reached_provider:
        transport_for(channel).send(message, rendered)
    return message


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
def test_a_worker_lost_in_the_call_is_settled_by_asking_the_provider(beat, providers, quick, channel):
    arrived = interrupted(channel, reached_provider=True)
    lost = interrupted(channel, reached_provider=False)
    [first] = providers.messages()
    # Two extra lookup tasks at once, as two reconcilers might publish: the claim decides.
    verify_messages.delay([arrived.pk, lost.pk])
    verify_messages.delay([arrived.pk, lost.pk])
    arrived, lost = finished(arrived), finished(lost)
    assert (arrived.status, arrived.provider_message_id, arrived.attempts) == (Message.Status.SENT, first.provider_id, 1)
    assert (lost.status, lost.attempts) == (Message.Status.SENT, 2)
    time.sleep(1.0)
    got = providers.messages()
    assert len(got) == 2 and {r.provider_id for r in got} == {arrived.provider_message_id, lost.provider_message_id}


@pytest.mark.parametrize("channel", [Channel.EMAIL, Channel.SMS])
def test_without_a_lookup_a_lost_call_is_failed_as_outcome_unknown(beat, providers, quick, settings, channel):
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    settings.SMS_BACKEND = "console"
    message = finished(interrupted(channel, reached_provider=False))
    assert message.status == Message.Status.FAILED
    assert message.error.startswith("worker lost during the provider call: outcome unknown (")
    assert "not resent to avoid a duplicate" in message.error
    assert providers.messages() == [] and providers.lookups == []


def test_a_refused_connection_is_a_plain_retry_and_a_read_timeout_may_have_arrived(providers):
    refused = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))
    assert not classify(refused).maybe_sent and not classify(refused).permanent
    assert not classify(requests.ConnectTimeout("connect")).maybe_sent
    assert classify(requests.ReadTimeout("read")).maybe_sent
    assert classify(requests.ConnectionError(ProtocolError("Connection aborted."))).maybe_sent


def test_postmark_search_answers_parse():
    found = {"TotalCount": 1, "Messages": [{"MessageID": "pm-1", "Metadata": {"drip_message_id": "7"}}]}
    assert parse_postmark_search(found, 7) == Lookup.accepted("pm-1")
    assert parse_postmark_search({"TotalCount": 0, "Messages": []}, 7) == Lookup.not_found()
    # A search that ignored the filter: another message's metadata is not this one.
    assert parse_postmark_search({"TotalCount": 1, "Messages": [{"MessageID": "x", "Metadata": {"drip_message_id": "8"}}]}, 7).outcome == Lookup.NOT_FOUND
    assert parse_postmark_search({"ErrorCode": 10}, 7).outcome == Lookup.CANNOT_TELL


def test_twilio_messages_match_on_body_and_time():
    now = timezone.now()
    message = Message(pk=1, to="+14155550100", body="Reminder: tomorrow", sending_at=now)

    def sms(sid: str, body: str, ago: float, service: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(sid=sid, body=body, date_created=now - timedelta(seconds=ago), messaging_service_sid=service)

    assert match_twilio_messages([sms("SM2", "other", 0), sms("SM1", "Reminder: tomorrow", -1)], message) == Lookup.accepted("SM1")
    # The same words sent long before this call (an earlier reminder) are not this message.
    assert match_twilio_messages([sms("SM0", "Reminder: tomorrow", 3600)], message) == Lookup.not_found()
    assert match_twilio_messages([sms("SM2", "other", 0)], message) == Lookup.not_found()
    # A messaging service may rewrite a body: an unmatched message of ours is not proof of absence.
    assert match_twilio_messages([sms("SM2", "rewritten", 0, "MG1")], message, "MG1").outcome == Lookup.CANNOT_TELL
    assert match_twilio_messages([sms("SM3", "Reminder: tomorrow", 0, "MG1")], message, "MG1") == Lookup.accepted("SM3")


def test_a_verify_task_lost_mid_batch_holds_only_the_row_in_hand(transactional_db, providers, settings):
    """A verify task claims each row right before its lookup. Killed in its first lookup, it
    holds that row for two provider timeouts (then the reconciler publishes it again) and
    none of the rest: the whole batch's lease was 30 s per row, 50 minutes for 100 rows."""
    from drip.delivery.verify import _claim
    from drip.timer import scheduler
    from drip.timer.publish import broker_was_reset
    from tests.helpers import flush_broker

    settings.DRIP_PROVIDER_TIMEOUT = 1.0  # a lease of 2 s, past the claims' 1 s early tolerance
    settings.DRIP_RECONCILE_GRACE = 0.2
    broker_was_reset()  # the mark in place: this reconcile is not a broker recovery
    rows = [interrupted(Channel.EMAIL, reached_provider=False) for _ in range(3)]
    now = timezone.now()
    Message.objects.filter(pk__in=[m.pk for m in rows]).update(verify_at=now, error="verifying with the provider: test")
    in_hand = _claim(rows[0].pk)  # the task that dies in this lookup
    assert in_hand is not None and in_hand.verify_at <= now + timedelta(seconds=2.01)
    untouched = Message.objects.filter(pk__in=[m.pk for m in rows[1:]])
    assert list(untouched.values_list("verify_at", flat=True)) == [now, now]
    assert _claim(rows[0].pk) is None  # a second task leaves the held row alone
    time.sleep(2.4)  # past the lease and the grace
    try:
        assert scheduler.reconcile()["verifications_reenqueued"] == 3
    finally:
        flush_broker()
