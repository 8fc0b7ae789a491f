"""Twilio takes one message per request: a send task makes its SMS requests side by side
(DRIP_SMS_PARALLEL), through the real twilio client and a real worker against the loopback
stub; each message keeps its own guarded write, outcome and error."""
from __future__ import annotations

import time

from django.utils import timezone

from drip.models import Channel, Message
from tests.factories import steps_due_together
from tests.helpers import wait_until

FINAL = {Message.Status.SENT, Message.Status.FAILED, Message.Status.SKIPPED}


def sms_settled(n: int) -> list[Message]:
    wait_until(lambda: Message.objects.filter(channel=Channel.SMS, status__in=FINAL).count() == n, timeout=30)
    return list(Message.objects.filter(channel=Channel.SMS).order_by("id"))


def test_the_sms_of_a_send_batch_go_side_by_side(worker, providers, settings):
    settings.DRIP_SMS_PARALLEL = 8
    providers.slow_down(0.3)  # a provider's round trip: one after the other, 8 would take 2.4 s
    started = time.monotonic()
    steps_due_together(8, timezone.now())  # 8 reminders: 8 emails, 8 SMS in one send batch each
    messages = sms_settled(8)
    took = time.monotonic() - started
    assert providers.sms_most_in_flight == 8
    assert took < 8 * 0.3, f"8 SMS at 0.3 s each took {took:.2f} s: not side by side"
    received = {r.to: r.provider_id for r in providers.messages("sms")}
    assert len(received) == 8 and len(providers.messages("sms")) == 8  # each once
    for message in messages:
        assert (message.status, message.attempts) == (Message.Status.SENT, 1)
        assert message.provider_message_id == received[message.to]  # its own sid
        assert message.sending_at is not None and message.body  # its guarded write
        assert message.sending_at <= message.sent_at


def test_an_sms_refused_among_others_fails_alone(worker, providers, settings):
    settings.DRIP_SMS_PARALLEL = 4
    providers.fail_next("sms", 400, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})
    steps_due_together(4, timezone.now())
    messages = sms_settled(4)
    failed = [m for m in messages if m.status == Message.Status.FAILED]
    assert len(failed) == 1 and "21211" in failed[0].error and failed[0].attempts == 1
    sent = [m for m in messages if m.status == Message.Status.SENT]
    assert len(sent) == 3 and len(providers.messages("sms")) == 3
    assert len({m.provider_message_id for m in sent}) == 3


def test_one_at_a_time_when_parallel_is_one(worker, providers, settings):
    settings.DRIP_SMS_PARALLEL = 1
    providers.slow_down(0.1)
    steps_due_together(4, timezone.now())
    messages = sms_settled(4)
    assert providers.sms_most_in_flight == 1
    assert {m.status for m in messages} == {Message.Status.SENT}
