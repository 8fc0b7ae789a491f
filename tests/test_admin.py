"""The operator's admin: bad input is refused with a clear message, enrolling works."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from drip.domain.consent import has_consent, record_consent
from drip.models import Channel, ConsentRecord, Contact, Event, Registration, Step
from tests.factories import enroll, make_contact, make_event


@pytest.fixture
def operator(client, db):
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


def contact_form(**overrides: str) -> dict[str, str]:
    data = {
        "external_id": "ada", "email": "ada@example.com", "phone": "+14155550123", "first_name": "Ada",
        "last_name": "Lovelace", "timezone": "Europe/London", "email_consent": "on",
        "consents-TOTAL_FORMS": "0", "consents-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


def test_it_refuses_an_invalid_phone(operator):
    response = operator.post("/admin/drip/contact/add/", contact_form(phone="+1 555"))
    assert response.status_code == 200
    assert "+1 555 is not a valid phone number" in response.content.decode() or "not a phone number" in response.content.decode()
    assert not Contact.objects.exists()


def test_it_refuses_an_unknown_time_zone(operator):
    response = operator.post("/admin/drip/contact/add/", contact_form(timezone="Mars/Olympus"))
    assert "Mars/Olympus is not a known IANA time zone" in response.content.decode()
    assert not Contact.objects.exists()


def test_it_stores_a_national_number_typed_with_spaces_in_e164(operator):
    response = operator.post("/admin/drip/contact/add/", contact_form(phone="+44 20 7946 0958"))
    assert response.status_code == 302
    contact = Contact.objects.get()
    assert contact.phone == "+442079460958"
    assert has_consent(contact, Channel.EMAIL) and not has_consent(contact, Channel.SMS)
    assert contact.consents.get().detail == "admin:op"


def test_it_refuses_an_event_in_an_unknown_time_zone(operator):
    response = operator.post("/admin/drip/event/add/", {
        "external_id": "e1", "title": "T", "starts_at_0": "2030-01-01", "starts_at_1": "10:00:00",
        "timezone": "Nowhere/Else", "status": "scheduled",
    })
    assert "Nowhere/Else is not a known IANA time zone" in response.content.decode()
    assert not Event.objects.exists()


def test_lifting_a_recipient_suppression_needs_a_reason(operator):
    contact = make_contact(sms_consent=False)
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    form = contact_form(external_id=contact.external_id, email=contact.email, phone=contact.phone,
                        timezone=contact.timezone, sms_consent="on")
    form["consents-INITIAL_FORMS"] = str(contact.consents.count())
    form["consents-TOTAL_FORMS"] = form["consents-INITIAL_FORMS"]
    for i, record in enumerate(contact.consents.all()):
        form[f"consents-{i}-id"] = str(record.pk)
        form[f"consents-{i}-contact"] = str(contact.pk)
    response = operator.post(f"/admin/drip/contact/{contact.pk}/change/", form)
    assert "give a reason to lift it" in response.content.decode()
    assert not has_consent(contact, Channel.SMS)
    form["consent_reason"] = "Confirmed by phone call on 2026-11-27"
    response = operator.post(f"/admin/drip/contact/{contact.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert has_consent(contact, Channel.SMS)


def test_enroll_in_event_action_registers_the_selected_contacts(operator, django_capture_on_commit_callbacks):
    contacts = [make_contact(), make_contact()]
    event = make_event()
    ids = [str(c.pk) for c in contacts]
    page = operator.post("/admin/drip/contact/", {"action": "enroll_in_event", "_selected_action": ids})
    assert "Enroll contacts in an event" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=False):
        done = operator.post("/admin/drip/contact/", {"action": "enroll_in_event", "_selected_action": ids,
                                                      "event": str(event.pk), "apply": "Enroll"}, follow=True)
    assert "Enrolled 2 contact(s)" in done.content.decode()
    assert Registration.objects.filter(event=event).count() == 2
    assert Step.objects.filter(registration__event=event).count() == 6
    again = operator.post("/admin/drip/contact/", {"action": "enroll_in_event", "_selected_action": ids,
                                                   "event": str(event.pk), "apply": "Enroll"}, follow=True)
    assert "Enrolled 0 contact(s)" in again.content.decode() and "2 already registered" in again.content.decode()


def test_the_audit_pages_render(operator):
    make_contact()
    for page in ("contact", "event", "registration", "step", "message", "consentrecord"):
        response = operator.get(f"/admin/drip/{page}/")
        assert response.status_code in (200, 404), page


def test_complete_event_action_marks_attendance_and_plans_the_post_event_funnel(operator):
    event = make_event(starts_in=-7200)
    ada, bob = make_contact(), make_contact()
    reg_ada = enroll(ada, event)
    enroll(bob, event)
    page = operator.post("/admin/drip/event/", {"action": "complete_event", "_selected_action": [str(event.pk)]})
    assert "Tick who attended" in page.content.decode()
    done = operator.post("/admin/drip/event/", {
        "action": "complete_event", "_selected_action": [str(event.pk)], "attended": [str(reg_ada.pk)], "apply": "1",
    }, follow=True)
    assert "1 attended, 1 no-show, 6 post-event steps planned" in done.content.decode()
    event.refresh_from_db()
    assert event.status == Event.Status.COMPLETED
    assert set(Step.objects.filter(registration=reg_ada).values_list("key", flat=True)) == {"thank_you", "resources", "nurture"}
    again = operator.post("/admin/drip/event/", {
        "action": "complete_event", "_selected_action": [str(event.pk)], "apply": "1",
    }, follow=True)
    assert "was already completed; nothing planned" in again.content.decode()
    assert Step.objects.count() == 6


def test_send_again_requeues_only_failed_messages(operator, django_capture_on_commit_callbacks):
    from drip.models import Message

    contact = make_contact()
    failed = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome",
                                    status=Message.Status.FAILED, attempts=5, error="outcome unknown", error_class=Message.ErrorClass.OUTCOME_UNKNOWN)
    sent = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", status=Message.Status.SENT)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = operator.post("/admin/drip/message/", {"action": "send_again", "_selected_action": [failed.pk, sent.pk]}, follow=True)
    assert "Re-queued 1 failed message(s)" in response.content.decode()
    failed.refresh_from_db()
    sent.refresh_from_db()
    assert (failed.status, failed.attempts) == (Message.Status.QUEUED, 0)
    assert sent.status == Message.Status.SENT
    assert len(callbacks) == 1


def test_run_now_makes_pending_steps_due_at_once(operator, django_capture_on_commit_callbacks):
    registration = enroll(make_contact(), make_event())
    reminder = Step.objects.get(registration=registration, key="reminder_24h")
    assert reminder.status == Step.Status.PENDING
    with django_capture_on_commit_callbacks(execute=False):
        response = operator.post("/admin/drip/step/", {"action": "run_now", "_selected_action": [reminder.pk]}, follow=True)
    assert "1 step(s) enqueued to run now" in response.content.decode()
    reminder.refresh_from_db()
    assert reminder.status == Step.Status.ENQUEUED
    assert (timezone.now() - reminder.due_at).total_seconds() < 5


def test_completing_in_the_future_is_refused_and_status_is_not_editable(operator):
    event = make_event(starts_in=-7200)
    page = operator.post("/admin/drip/event/", {
        "action": "complete_event", "_selected_action": [str(event.pk)], "apply": "1",
        "completed_at": "9999-12-31 23:30:00",
    })
    assert "An event cannot be completed in the future." in page.content.decode()
    event.refresh_from_db()
    assert event.status == Event.Status.SCHEDULED
    change = operator.get(f"/admin/drip/event/{event.pk}/change/").content.decode()
    assert '<select name="status"' not in change
    from drip.delivery.rendering import format_when

    assert format_when(event.starts_at, "America/New_York") in change  # shown in the event's zone


def test_an_event_start_is_typed_and_shown_in_the_event_time_zone(operator):
    response = operator.post("/admin/drip/event/add/", {
        "external_id": "e1", "title": "T", "starts_at_0": "2030-07-01", "starts_at_1": "15:00:00",
        "timezone": "America/New_York", "join_url": "https://example.com/j",
    })
    assert response.status_code == 302, response.content.decode()
    event = Event.objects.get()
    assert event.starts_at.isoformat() == "2030-07-01T19:00:00+00:00"  # 3 PM EDT
    change = operator.get(f"/admin/drip/event/{event.pk}/change/").content.decode()
    assert 'value="15:00:00"' in change and 'value="2030-07-01"' in change
    # A time that does not exist in the zone (the spring-forward gap) is refused, naming it.
    response = operator.post(f"/admin/drip/event/{event.pk}/change/", {
        "external_id": "e1", "title": "T", "starts_at_0": "2030-03-10", "starts_at_1": "02:30:00",
        "timezone": "America/New_York", "join_url": "https://example.com/j",
    })
    assert response.status_code == 200 and "America/New_York" in response.content.decode()
    event.refresh_from_db()
    assert event.starts_at.isoformat() == "2030-07-01T19:00:00+00:00"


def test_a_completed_event_start_is_shown_not_offered(operator):
    """The reschedule service refuses to move a completed event: the form must not offer it
    (it used to say "changed successfully" beside "the start was not changed")."""
    event = make_event(starts_in=-7200)
    Event.objects.filter(pk=event.pk).update(status=Event.Status.COMPLETED, completed_at=timezone.now())
    change = operator.get(f"/admin/drip/event/{event.pk}/change/").content.decode()
    assert 'name="starts_at_0"' not in change
    response = operator.post(f"/admin/drip/event/{event.pk}/change/", {
        "external_id": event.external_id, "title": "Renamed", "starts_at_0": "2030-07-01", "starts_at_1": "15:00:00",
        "timezone": event.timezone, "join_url": event.join_url,
    })
    assert response.status_code == 302
    moved = Event.objects.get(pk=event.pk)
    assert moved.starts_at == event.starts_at and moved.title == "Renamed"
