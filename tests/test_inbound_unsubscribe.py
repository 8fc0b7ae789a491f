"""RFC 8058 one-click unsubscribe: the link taken from a real email the worker sent to the
provider stub, then used as a mailbox provider (one-click POST), a mail scanner (GET) and
the recipient (the page's buttons) would."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from django.core import checks, signing
from django.test import Client

from drip.domain.consent import has_consent
from drip.domain.tokens import BadToken, address_tag, make_token, read_token
from drip.doors.inbound.checks import compliance_checks
from drip.engine.direct import send_direct
from drip.models import Channel, ConsentRecord, Contact, Message, Suppression
from tests.factories import make_contact, make_event, register_quietly
from tests.helpers import current, wait_until
from tests.stubs import Received

ADDRESS = "Drip Events Ltd, 1 Example Street, Springfield, USA"


def send_email(providers, contact: Contact | None = None) -> tuple[Message, Received]:
    contact = contact or make_contact()
    message, _ = send_direct(contact, Channel.EMAIL, "reminder_24h", registration=register_quietly(contact, make_event()))
    wait_until(lambda: Message.objects.get(pk=message.pk).status == Message.Status.SENT)
    [got] = providers.messages("email", to=contact.email)
    return message, got


def header_url(got: Received) -> str:
    match = re.fullmatch(r"<(.+)>", got.headers["List-Unsubscribe"])
    assert match is not None, got.headers
    return match.group(1)


def link_path(got: Received) -> str:
    return urlsplit(header_url(got)).path



@pytest.fixture
def mailbox(settings):
    """What a mailbox provider has: no cookie, no CSRF token, and a client that would notice one."""
    settings.DRIP_SENDER_ADDRESS = ADDRESS
    return Client(enforce_csrf_checks=True)


def one_click(client: Client, path: str):
    return client.post(path, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")


def test_every_email_carries_both_headers_and_the_link_and_address_in_both_bodies(worker, providers, settings):
    settings.PUBLIC_BASE_URL = "https://drip.example.org"
    settings.DRIP_SENDER_ADDRESS = ADDRESS
    message, got = send_email(providers)
    url = header_url(got)
    assert got.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert url.startswith("https://drip.example.org/u/") and url.endswith("/")
    assert f"Unsubscribe: {url}" in got.text and f'<a href="{url}"' in got.html
    assert ADDRESS in got.text and ADDRESS in got.html
    assert got.raw["Metadata"] == {"drip_message_id": str(message.pk)}
    assert got.headers["X-Drip-Message-Id"] == str(message.pk)
    link = read_token(urlsplit(url).path.split("/")[2])
    assert (link.contact_id, link.channel, link.address_tag) == (message.contact_id, Channel.EMAIL, address_tag(Channel.EMAIL, message.to))
    assert message.to.split("@")[0] not in url  # the address itself is never in the link


def test_get_shows_a_confirm_button_and_changes_nothing(worker, providers, mailbox):
    message, got = send_email(providers)
    before = ConsentRecord.objects.count()
    for _ in range(2):  # a mail scanner, then the recipient
        page = mailbox.get(link_path(got))
        assert page.status_code == 200
        assert '<form method="post">' in page.content.decode() and "Unsubscribe" in page.content.decode()
    assert ConsentRecord.objects.count() == before and has_consent(message.contact, Channel.EMAIL)


def test_one_click_post_revokes_for_the_address_answers_200_and_repeats_harmlessly(worker, providers, mailbox):
    message, got = send_email(providers)
    twin = make_contact(email=message.contact.email)  # the same mailbox, another contact
    for _ in range(2):
        response = one_click(mailbox, link_path(got))
        assert response.status_code == 200 and not response.has_header("Location")
        assert "You are unsubscribed" in response.content.decode()
    for contact in (message.contact, twin):
        record = current(contact, Channel.EMAIL)
        assert (record.granted, record.source, record.detail) == (False, ConsentRecord.Source.RECIPIENT, "unsubscribe:one-click")
        assert has_consent(contact, Channel.SMS)
    assert Suppression.objects.count() == 1
    # The next email is not sent.
    again, _ = send_direct(message.contact, Channel.EMAIL, "reminder_24h", registration=message.registration)
    wait_until(lambda: Message.objects.get(pk=again.pk).status == Message.Status.SKIPPED)
    assert len(providers.messages("email")) == 1


def test_a_multipart_one_click_post_works_too(worker, providers, mailbox):
    message, got = send_email(providers)
    response = mailbox.post(link_path(got), {"List-Unsubscribe": "One-Click"})  # multipart/form-data
    assert response.status_code == 200
    assert current(message.contact, Channel.EMAIL).detail == "unsubscribe:one-click"


def test_the_page_unsubscribes_then_offers_to_resubscribe(worker, providers, mailbox):
    message, got = send_email(providers)
    path = link_path(got)
    page = mailbox.post(path, {})
    assert "Re-subscribe" in page.content.decode()
    assert current(message.contact, Channel.EMAIL).detail == "unsubscribe:page"
    assert "Re-subscribe" in mailbox.get(path).content.decode()
    again = resubscribe_value(page)
    page = mailbox.post(path, {"action": "resubscribe", "again": again})
    assert page.status_code == 200 and "You are subscribed again" in page.content.decode()
    record = current(message.contact, Channel.EMAIL)
    assert (record.granted, record.source, record.is_suppression) == (True, ConsentRecord.Source.API, False)
    second, _ = send_direct(message.contact, Channel.EMAIL, "reminder_24h", registration=message.registration)
    wait_until(lambda: Message.objects.get(pk=second.pk).status == Message.Status.SENT)


def resubscribe_value(page) -> str:
    found = re.search(r'name="again" value="([^"]+)"', page.content.decode())
    assert found, "the page offers no re-subscribe button"
    return found.group(1)


def test_an_unsubscribe_withdraws_the_contacts_unsent_email_at_once(db, mailbox):
    contact = make_contact()
    waiting = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", to=contact.email)
    sms = Message.objects.create(contact=contact, channel=Channel.SMS, template_type="reminder_1h", to=contact.phone)
    one_click(mailbox, f"/u/{make_token(contact.pk, Channel.EMAIL, contact.email)}/")
    waiting.refresh_from_db()
    sms.refresh_from_db()
    assert (waiting.status, waiting.error) == (Message.Status.SKIPPED, "no email consent")
    assert sms.status == Message.Status.QUEUED


def tampered(token: str) -> list[str]:
    value, _, signature = token.rpartition(":")
    other_id = str(int(value.split(".")[0]) + 1)
    return [
        f"{other_id}.e:{signature}",  # another contact's id under this signature
        f"{value}:{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",  # one character changed
        token[: len(token) // 2],  # truncated
        signing.Signer(salt="another.purpose").sign(value),  # foreign: signed for something else
        signing.Signer(salt="drip.inbound.unsubscribe", key="another-secret").sign(value),
        value,  # no signature at all
    ]


def test_a_tampered_truncated_or_foreign_token_is_400_and_writes_nothing(db, mailbox):
    contact = make_contact()
    make_contact()  # the "other" id exists
    before = ConsentRecord.objects.count()
    for bad in tampered(make_token(contact.pk, Channel.EMAIL, contact.email)):
        with pytest.raises(BadToken):
            read_token(bad)
        assert mailbox.get(f"/u/{bad}/").status_code == 400, bad
        assert one_click(mailbox, f"/u/{bad}/").status_code == 400, bad
    assert ConsentRecord.objects.count() == before


def test_a_token_for_an_unknown_contact_is_404(db, mailbox):
    token = make_token(10**9, Channel.EMAIL, "nobody@example.com")
    assert one_click(mailbox, f"/u/{token}/").status_code == 404
    assert not Suppression.objects.exists()


def test_a_missing_sender_address_is_a_startup_warning_when_debug_is_off(settings):
    settings.DEBUG = False
    settings.DRIP_SENDER_ADDRESS = ""
    assert "drip.W001" in [w.id for w in compliance_checks()]
    assert "drip.W001" in [w.id for w in checks.run_checks(tags=["drip"])]
    settings.DRIP_SENDER_ADDRESS = ADDRESS
    assert "drip.W001" not in [w.id for w in compliance_checks()]
    settings.DEBUG = True
    assert compliance_checks() == []


def test_a_link_whose_final_slash_was_dropped_still_unsubscribes_with_no_redirect(db, mailbox, settings):
    for debug in (True, False):  # DEBUG turns APPEND_SLASH's POST redirect into an error page
        settings.DEBUG = debug
        contact = make_contact()
        response = one_click(mailbox, f"/u/{make_token(contact.pk, Channel.EMAIL, contact.email)}")
        assert response.status_code == 200 and not response.has_header("Location")
        assert current(contact, Channel.EMAIL).detail == "unsubscribe:one-click"


def test_a_post_to_any_other_slashless_url_is_a_404_never_an_error_or_a_redirect(db, mailbox, settings):
    for debug in (True, False):
        settings.DEBUG = debug
        response = mailbox.post("/anymail/postmark/tracking", "{}", content_type="application/json")
        assert response.status_code == 404 and not response.has_header("Location")
    assert mailbox.get("/admin").status_code == 301  # GET keeps Django's slash redirect
