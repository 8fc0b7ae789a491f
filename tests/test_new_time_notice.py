"""Rescheduling says how many reminders moved, and each active registrant with email
consent gets one short "new time" email through the real sender, in their own zone."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from drip.delivery.rendering import format_when
from drip.domain.tokens import unsubscribe_url
from drip.engine import services
from drip.models import Message, Registration, Step
from tests.factories import enroll, make_contact, make_event
from tests.helpers import wait_until


@pytest.fixture
def operator(client, db):
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


def notices() -> list[Message]:
    return list(Message.objects.filter(template_type="new_time").select_related("contact").order_by("id"))


def open_pre_event_steps(event) -> int:
    event.refresh_from_db()
    return Step.objects.filter(registration__event=event, status__in=Step.OPEN, anchor_at=event.starts_at).count()


def audience(event):
    """Two who should hear of it, one without email consent, one who cancelled."""
    tokyo = enroll(make_contact(sms_consent=False, timezone="Asia/Tokyo", first_name="Kenji"), event)
    london = enroll(make_contact(sms_consent=False, timezone="Europe/London"), event)
    enroll(make_contact(email_consent=False, sms_consent=False), event)
    gone = enroll(make_contact(sms_consent=False), event)
    services.cancel_registration(gone)
    return tokyo, london


def test_a_move_over_the_threshold_emails_each_active_registrant_the_new_time(worker, providers):
    event = make_event(title="Launch")
    tokyo, london = audience(event)
    new_start = event.starts_at + timedelta(hours=2)
    done = services.reschedule(event, new_start)
    assert (done.moved, done.notices_queued) == (True, 2)
    assert done.reminders_moved >= 6  # 24 h + 1 h of the three active registrations (and any welcome still unsent)
    wait_until(lambda: len([r for r in providers.messages(kind="email") if r.subject.startswith("New time")]) == 2)
    sent = {r.to: r for r in providers.messages(kind="email") if r.subject == "New time: Launch"}
    assert set(sent) == {tokyo.contact.email, london.contact.email}
    assert format_when(new_start, "Asia/Tokyo") in sent[tokyo.contact.email].text  # the contact's zone
    assert "JST" in sent[tokyo.contact.email].text and "Hi Kenji" in sent[tokyo.contact.email].text
    assert format_when(new_start, "Europe/London") in sent[london.contact.email].text
    got = sent[tokyo.contact.email]
    link = unsubscribe_url(tokyo.contact.pk, tokyo.contact.email)
    assert f"Unsubscribe: {link}" in got.text and link in got.html and got.headers["List-Unsubscribe"] == f"<{link}>"
    assert got.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert {m.purpose for m in notices()} == {"transactional"} and {m.status for m in notices()} == {"sent"}
    assert {m.registration_id for m in notices()} == {tokyo.pk, london.pk}


def test_the_same_move_again_sends_nothing_new(db):
    event = make_event()
    audience(event)
    new_start = event.starts_at + timedelta(hours=1)
    assert services.reschedule(event, new_start).notices_queued == 2
    again = services.reschedule(event, new_start)
    assert (again.moved, again.reminders_moved, again.notices_queued) == (False, 0, 0)
    assert len(notices()) == 2
    # Moving back and then to that time again is a new move: registrants hear of each.
    assert services.reschedule(event, new_start - timedelta(hours=1)).notices_queued == 2
    assert services.reschedule(event, new_start).notices_queued == 2
    assert len(notices()) == 6


def test_a_small_move_sends_no_notice(db, settings):
    settings.DRIP_RESCHEDULE_NOTICE_MINUTES = 15
    event = make_event()
    audience(event)
    done = services.reschedule(event, event.starts_at + timedelta(minutes=10))
    assert done.moved and done.reminders_moved == open_pre_event_steps(event) and done.notices_queued == 0
    assert notices() == []


def test_the_admin_save_says_how_many_reminders_moved_and_notices_queued(operator):
    event = make_event(title="Saved", timezone="UTC")
    audience(event)
    later = event.starts_at + timedelta(hours=3)
    page = operator.post(f"/admin/drip/event/{event.pk}/change/", {
        "external_id": event.external_id, "title": "Saved", "starts_at_0": later.strftime("%Y-%m-%d"),
        "starts_at_1": later.strftime("%H:%M:%S"), "timezone": "UTC", "join_url": event.join_url,
        "recording_url": "", "slides_url": "",
    }, follow=True).content.decode()
    moved = open_pre_event_steps(event)
    assert moved >= 6 and f"{moved} reminder(s) moved to the new start; 2 “new time” email(s) queued." in page
    assert len(notices()) == 2
    assert Registration.objects.filter(event=event, status="active").count() == 3


def test_the_template_preview_lists_the_new_time_email(operator):
    page = operator.get("/admin/drip/message/preview/").content.decode()
    assert "new_time (email)" in page
    shown = operator.get("/admin/drip/message/preview/?template=new_time:email").content.decode()
    assert "has moved" in shown and "Sample webinar" in shown
