"""Twilio takes one message per request: a send task of the prefork worker makes its SMS
requests side by side (DRIP_SMS_PARALLEL), through the real twilio client against the
loopback stub; each message keeps its own outcome. A task on a threads pool (sender_sms)
sends one at a time: its threads already run beside each other. An ESP that takes one email
per request is called the same way (DRIP_EMAIL_PARALLEL)."""
from __future__ import annotations

import os
import signal
import threading
import time

from django.utils import timezone

from drip.delivery.channels import EmailTransport, TransportError, TwilioSmsTransport
from drip.delivery.rendering import Rendered
from drip.models import Channel, Message
from tests.factories import make_contact, steps_due_together
from tests.helpers import flush_broker, wait_for_worker, wait_until, worker_process

FINAL = {Message.Status.SENT, Message.Status.FAILED, Message.Status.SKIPPED}


def sms(n: int) -> list[tuple[Message, Rendered]]:
    items = []
    for _ in range(n):
        contact = make_contact()
        message = Message.objects.create(contact=contact, channel=Channel.SMS, template_type="reminder_1h", to=contact.phone)
        items.append((message, Rendered("", f"Reminder for {contact.first_name}", "")))
    return items


def test_a_group_of_sms_goes_side_by_side(db, providers, settings):
    settings.DRIP_SMS_PARALLEL = 8
    providers.slow_down(0.3)  # a provider's round trip: one after the other, 8 would take 2.4 s
    items = sms(8)
    started = time.monotonic()
    outcomes = TwilioSmsTransport().send_many(items)
    took = time.monotonic() - started
    assert providers.sms_most_in_flight == 8
    assert took < 8 * 0.3, f"8 SMS at 0.3 s each took {took:.2f} s: not side by side"
    sids = {r.to: r.provider_id for r in providers.messages("sms")}
    assert [sids[message.to] for message, _ in items] == outcomes  # each its own sid, in order


def test_an_sms_refused_among_others_fails_alone(db, providers, settings):
    settings.DRIP_SMS_PARALLEL = 4
    providers.fail_next("sms", 400, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})
    outcomes = TwilioSmsTransport().send_many(sms(4))
    refused = [o for o in outcomes if isinstance(o, TransportError)]
    assert len(refused) == 1 and refused[0].permanent and "21211" in refused[0].message
    assert len(providers.messages("sms")) == 3 and len({o for o in outcomes if isinstance(o, str)}) == 3


def test_a_task_on_a_threads_pool_sends_one_at_a_time(db, providers, settings):
    settings.DRIP_SMS_PARALLEL = 8
    providers.slow_down(0.05)
    items = sms(4)
    outcomes: list = []
    thread = threading.Thread(target=lambda: outcomes.extend(TwilioSmsTransport().send_many(items)))
    thread.start()
    thread.join()
    assert providers.sms_most_in_flight == 1 and len(outcomes) == 4 and all(isinstance(o, str) for o in outcomes)


def test_the_prefork_worker_sends_a_batch_of_sms_side_by_side(transactional_db, providers, settings):
    """End to end: reminders due now, run by a real prefork worker (as the Procfile's)."""
    flush_broker()
    providers.slow_down(0.3)
    worker = worker_process(providers, {"DRIP_SMS_PARALLEL": "8"})
    try:
        wait_for_worker()
        steps_due_together(8, timezone.now())  # 8 reminders: 8 emails and 8 SMS, one send batch each
        wait_until(lambda: Message.objects.filter(channel=Channel.SMS, status__in=FINAL).count() == 8, timeout=30)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        flush_broker()
    assert providers.sms_most_in_flight == 8
    messages = Message.objects.filter(channel=Channel.SMS)
    assert {m.status for m in messages} == {Message.Status.SENT} and len(providers.messages("sms")) == 8
    received = {r.to: r.provider_id for r in providers.messages("sms")}
    for message in messages:
        assert message.provider_message_id == received[message.to] and message.sending_at <= message.sent_at


def test_an_esp_without_a_batch_endpoint_gets_its_emails_side_by_side(db, providers, settings):
    """Postmark with batches of one stands for any anymail ESP that takes one email per request."""
    settings.DRIP_EMAIL_BATCH_MAX = 1
    settings.DRIP_EMAIL_PARALLEL = 4
    providers.slow_down(0.3)
    items = []
    for _ in range(8):
        contact = make_contact()
        message = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="reminder_1h", to=contact.email)
        items.append((message, Rendered(f"Soon, {contact.first_name}", "Starts soon.", "")))
    transport = EmailTransport()
    assert transport.batch_max == 32  # a group of 32 shares the sender's writes, 4 at a time
    started = time.monotonic()
    outcomes = transport.send_many(items)
    took = time.monotonic() - started
    assert providers.email_most_in_flight == 4 and providers.email_requests == [("email", 1)] * 8
    assert took < 8 * 0.3 * 0.75, f"8 emails at 0.3 s each took {took:.2f} s: not side by side"
    ids = {r.to: r.provider_id for r in providers.messages("email")}
    assert [ids[message.to] for message, _ in items] == outcomes


def test_the_console_email_backend_prints_one_after_the_other(db, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert EmailTransport().parallel == 1 and EmailTransport().batch_max == 1
