"""Postmark's `/email/batch`: the emails of a send batch go to the provider in one request,
through the real anymail Postmark backend and a real worker, against the loopback stub; each
message still has its own outcome. Other email backends send one message per request."""
from __future__ import annotations

import json

import pytest
from django.core import mail
from django.utils import timezone

from drip.delivery.channels import EmailTransport
from drip.delivery.channels.base import METADATA_KEY
from drip.delivery.rendering import Rendered, render_message
from drip.domain.consent import has_consent
from drip.models import Channel, ConsentRecord, Message, Step
from drip.timer import scheduler
from tests.factories import make_contact, make_event, register_quietly, steps_due_together
from tests.helpers import assert_each_sent_once, current, wait_until

FINAL = {Message.Status.SENT, Message.Status.FAILED, Message.Status.SKIPPED}


def welcome_emails(n: int) -> list[Message]:
    """n welcome emails due now: one step task, so one send batch (DRIP_SEND_BATCH is 200)."""
    steps_due_together(n, timezone.now(), key="welcome")
    wait_until(lambda: Message.objects.filter(status__in=FINAL).count() == n)
    return list(Message.objects.order_by("id"))


@pytest.mark.parametrize("n", [5, 50])
def test_a_batch_of_welcome_emails_goes_out_in_one_request(worker, providers, n):
    messages = welcome_emails(n)
    assert providers.email_requests == [("email/batch", n)]
    assert_each_sent_once(providers, n)
    received = {r.to: r.provider_id for r in providers.messages("email")}
    for message in messages:
        assert (message.status, message.attempts, message.error) == (Message.Status.SENT, 1, "")
        assert message.provider_message_id == received[message.to]  # its own MessageID
    assert len({m.provider_message_id for m in messages}) == n


@pytest.mark.parametrize("code,suppressed", [(406, True), (300, False)])
def test_a_refused_recipient_fails_alone_and_an_inactive_one_is_suppressed(worker, providers, code, suppressed):
    contacts = [make_contact() for _ in range(3)]
    refused = contacts[1]
    providers.refuse(refused.email, code)
    twin = make_contact(email=refused.email)  # the suppression belongs to the address
    event, now = make_event(), timezone.now()
    # Planned by hand (not steps_due_together), so the refused address exists before any
    # send; due at one instant, so one step task and one send batch.
    steps = [
        Step(registration=register_quietly(c, event), funnel="pre_event", key="welcome", anchor_at=event.starts_at,
             due_at=now, expires_at=event.starts_at)
        for c in contacts
    ]
    scheduler.schedule_steps(steps)
    wait_until(lambda: Message.objects.filter(status__in=FINAL).count() == 3)
    assert providers.email_requests == [("email/batch", 3)]
    failed = Message.objects.get(contact=refused)
    assert (failed.status, failed.attempts) == (Message.Status.FAILED, 1)
    assert f"postmark error {code}" in failed.error and "(permanent)" in failed.error
    assert set(Message.objects.exclude(pk=failed.pk).values_list("status", flat=True)) == {Message.Status.SENT}
    assert sorted(r.to for r in providers.messages("email")) == sorted([contacts[0].email, contacts[2].email])
    assert has_consent(refused, Channel.EMAIL) is not suppressed
    assert has_consent(twin, Channel.EMAIL) is not suppressed
    if suppressed:
        record = current(refused, Channel.EMAIL)
        assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.PROVIDER, "esp:rejected")


def test_a_503_for_the_whole_batch_retries_each_message_and_sends_each_once(worker, providers):
    providers.fail_next("email", 503)
    steps_due_together(4, timezone.now(), key="welcome")
    wait_until(lambda: Message.objects.filter(status=Message.Status.SENT).count() == 4)
    assert providers.email_requests[0] == ("email/batch", 4)
    assert sum(count for _, count in providers.email_requests) == 8  # the refused 4, then each once
    assert_each_sent_once(providers, 4)
    assert set(Message.objects.values_list("attempts", flat=True)) == {2}


def prepared(n: int) -> list[tuple[Message, Rendered]]:
    """n emails as the sender hands them to the transport: rendered, addressed."""
    event = make_event()
    pairs = []
    for _ in range(n):
        contact = make_contact()
        message = Message.objects.create(
            contact=contact, registration=register_quietly(contact, event), channel=Channel.EMAIL,
            template_type="reminder_24h", to=contact.email,
        )
        pairs.append((message, render_message(message)))
    return pairs


def test_a_batch_item_is_exactly_what_email_receives(db, providers):
    """Pins what the batch path takes from anymail: each item is its `/email` payload."""
    (first, first_rendered), second = prepared(2)
    transport = EmailTransport()
    alone = transport.send(first, first_rendered)
    together = transport.send_many([(first, first_rendered), second])
    assert providers.email_requests == [("email", 1), ("email/batch", 2)]
    single, batched = providers.messages("email", to=first.to)
    assert batched.raw == single.raw
    assert all(isinstance(outcome, str) for outcome in together) and together[0] != alone
    headers = batched.headers
    assert headers["X-Drip-Message-Id"] == str(first.pk)
    assert headers["List-Unsubscribe"].startswith("<http") and headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert batched.raw["Metadata"] == {METADATA_KEY: str(first.pk)}
    assert batched.raw["From"] == "events@example.com" and batched.html and batched.text


@pytest.mark.parametrize("defaults", [
    {},
    {"POSTMARK_SEND_DEFAULTS": {"metadata": {"app": "drip"}, "tags": ["events"], "track_clicks": True,
                                "extra_headers": {"X-Campaign": "webinars"}},
     "POSTMARK_MESSAGE_STREAM": "broadcast"},
])
def test_every_batch_item_is_what_anymail_builds_for_it(db, providers, settings, defaults):
    """The batch builds one payload with anymail and puts the others' own fields into copies
    of it (drip.delivery.channels.postmark.like): each must equal anymail's own, key by key, with the
    operator's send defaults too. An address anymail would IDNA-encode is built by anymail."""
    settings.ANYMAIL = {**settings.ANYMAIL, **defaults}
    items = prepared(4)
    items[1] = (items[1][0], Rendered("Zażółć – ünïcode", "text only, no html", ""))
    unicode_contact = make_contact(email="anna@bücher.example")
    items[3][0].to = unicode_contact.email
    transport = EmailTransport()
    connection = transport._connection()
    fast = transport._postmark_payloads(connection, items)
    for (message, rendered), payload in zip(items, fast, strict=True):
        anymails = transport._postmark_payload(connection, message, rendered)
        assert json.loads(payload.serialize_data()) == json.loads(anymails.serialize_data())
        assert payload.get_request_params(connection.api_url) == anymails.get_request_params(connection.api_url)
    assert fast[3].data["To"] == "anna@xn--bcher-kva.example"  # anymail's own IDNA encoding
    assert "HtmlBody" not in fast[1].data and fast[2].data["HtmlBody"]


def test_another_email_backend_sends_each_message_on_its_own(worker, providers, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert EmailTransport().batch_max == 1
    messages = welcome_emails(3)
    assert {m.status for m in messages} == {Message.Status.SENT}
    assert len({m.provider_message_id for m in messages}) == 3  # no provider id: a local one each
    assert sorted(e.to[0] for e in mail.outbox) == sorted(m.to for m in messages)
    assert providers.email_requests == []


def test_the_fallback_send_many_gives_one_outcome_per_message(db, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    outcomes = EmailTransport().send_many(prepared(2))
    assert len(outcomes) == 2 and all(isinstance(o, str) for o in outcomes) and outcomes[0] != outcomes[1]
    assert len(mail.outbox) == 2


def test_a_batch_refused_as_a_whole_fails_each_message_at_once(worker, providers):
    providers.fail_next("email", 422, {"ErrorCode": 410, "Message": "Too many batch messages."})
    messages = welcome_emails(3)
    assert providers.email_requests == [("email/batch", 3)] and providers.messages() == []
    for message in messages:
        assert (message.status, message.attempts) == (Message.Status.FAILED, 1)
        assert "email provider 422" in message.error and "(permanent)" in message.error
