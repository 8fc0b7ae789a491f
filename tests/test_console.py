"""The operator's console: a registration's timeline, an event's funnel, what needs
attention, template previews and test sends, and the guard rails (confirmations, no
deleting the audit, filters by event, times with their zone)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from drip.domain.consent import has_consent
from drip.models import Channel, Contact, DeliveryReport, Event, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event, register_quietly
from tests.helpers import wait_until


@pytest.fixture
def operator(client, db):
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


def text(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def enroll_with_the_action(client, contact, event):
    return client.post("/admin/drip/contact/", {
        "action": "enroll_in_event", "_selected_action": [contact.pk], "event": event.pk, "apply": "1",
    }, follow=True)


def test_a_registration_page_is_its_timeline_with_the_welcome_sent(worker, operator, providers):
    contact = make_contact(sms_consent=False, timezone="Europe/London")
    event = make_event()
    assert "Enrolled 1 contact(s)" in text(enroll_with_the_action(operator, contact, event))
    registration = Registration.objects.get(contact=contact, event=event)
    wait_until(lambda: Message.objects.filter(registration=registration, status=Message.Status.SENT).exists())
    message = Message.objects.get(registration=registration)
    DeliveryReport.objects.create(
        message=message, channel=Channel.EMAIL, kind=DeliveryReport.Kind.DELIVERED, occurred_at=timezone.now(),
        provider="postmark", dedupe_key="t1", detail="smtp;250 OK",
    )
    page = text(operator.get(f"/admin/drip/registration/{registration.pk}/change/"))
    assert "step welcome" in page and "email welcome sent" in page
    assert "postmark: Delivered (smtp;250 OK)" in page  # the provider's word
    assert "GMT" in page and " UTC" in page  # the contact's zone, and UTC beside it
    # reminders still due show as due, in time order after the welcome
    assert page.index("email welcome sent") < page.index("step reminder_24h: due")


def test_a_step_shows_its_outcome_per_channel(operator):
    contact = make_contact(sms_consent=False)
    registration = enroll(contact, make_event())
    step = Step.objects.get(registration=registration, key="reminder_24h")
    Step.objects.filter(pk=step.pk).update(status=Step.Status.DONE)
    Message.objects.create(step=step, contact=contact, registration=registration, channel=Channel.EMAIL,
                           template_type="reminder_24h", status=Message.Status.SENT, sent_at=timezone.now())
    Message.objects.create(step=step, contact=contact, registration=registration, channel=Channel.SMS,
                           template_type="reminder_24h", status=Message.Status.SKIPPED, error="no sms consent")
    assert "email sent, sms skipped: no sms consent" in text(operator.get(f"/admin/drip/registration/{registration.pk}/change/"))
    assert "email sent, sms skipped: no sms consent" in text(operator.get("/admin/drip/step/"))
    assert "no sms consent" in text(operator.get("/admin/drip/message/?reason=no+sms+consent"))


def test_lists_filter_by_event_status_and_channel_newest_first(operator):
    first, second = make_event(title="First"), make_event(title="Second")
    enroll(make_contact(), first)
    enroll(make_contact(), second)

    def listed(url: str) -> list:
        response = operator.get(url)
        assert response.status_code == 200, url
        return list(response.context["cl"].result_list)

    steps = listed(f"/admin/drip/step/?registration__event__id__exact={first.pk}&status__exact=pending")
    assert steps and {s.registration.event_id for s in steps} == {first.pk}
    assert [s.due_at for s in steps] == sorted((s.due_at for s in steps), reverse=True)  # newest first
    assert listed(f"/admin/drip/message/?registration__event__id__exact={first.pk}&channel__exact=sms&status__exact=sent") == []
    registrations = listed(f"/admin/drip/registration/?event__id__exact={second.pk}&status__exact=active")
    assert [r.event_id for r in registrations] == [second.pk]


def test_completing_a_future_event_asks_for_confirmation_and_forces_only_then(operator):
    event = make_event(starts_in=3 * 86400)
    enroll(make_contact(), event)
    action = {"action": "complete_event", "_selected_action": [event.pk]}
    form = text(operator.post("/admin/drip/event/", action))
    assert "Yes, it ended before its scheduled start" in form
    refused = text(operator.post("/admin/drip/event/", {**action, "apply": "1"}, follow=True))
    assert "completedAt" in refused and "Not completed" in refused
    event.refresh_from_db()
    assert event.status == Event.Status.SCHEDULED
    done = text(operator.post("/admin/drip/event/", {**action, "apply": "1", "ended_early": "on"}, follow=True))
    assert "Completed " in done
    event.refresh_from_db()
    assert event.status == Event.Status.COMPLETED


def test_a_past_event_completes_without_the_confirmation(operator):
    event = make_event(starts_in=-3600)
    action = {"action": "complete_event", "_selected_action": [event.pk]}
    assert "ended before its scheduled start" not in text(operator.post("/admin/drip/event/", action))
    assert "Completed " in text(operator.post("/admin/drip/event/", {**action, "apply": "1"}, follow=True))


def test_the_save_banner_shows_the_time_saved_in_the_events_zone(operator):
    page = text(operator.post("/admin/drip/event/add/", {
        "external_id": "e-banner", "title": "Banner", "starts_at_0": "2030-01-15", "starts_at_1": "10:00:00",
        "timezone": "America/New_York", "join_url": "", "recording_url": "", "slides_url": "",
    }, follow=True))
    assert "Banner (2030-01-15 10:00 EST)" in page
    assert str(Event.objects.get(external_id="e-banner")) == "Banner (2030-01-15 10:00 EST)"


def test_moving_a_registration_cancels_it_and_enrolls_in_the_other_event(operator):
    contact = make_contact()
    old, new = make_event(title="Old"), make_event(title="New")
    registration = enroll(contact, old)
    form = text(operator.post("/admin/drip/registration/", {"action": "move_to_event", "_selected_action": [registration.pk]}))
    assert "Move registrations to another event" in form
    done = text(operator.post("/admin/drip/registration/", {
        "action": "move_to_event", "_selected_action": [registration.pk], "event": new.pk, "apply": "1",
    }, follow=True))
    assert "Moved 1 registration(s)" in done
    registration.refresh_from_db()
    assert registration.status == Registration.Status.CANCELLED
    assert not Step.objects.filter(registration=registration, status__in=Step.OPEN).exists()
    moved = Registration.objects.get(contact=contact, event=new)
    assert moved.status == Registration.Status.ACTIVE and Step.objects.filter(registration=moved).exists()


def test_a_registrations_contact_and_event_cannot_be_edited(operator):
    registration = enroll(make_contact(), make_event())
    page = text(operator.get(f"/admin/drip/registration/{registration.pk}/change/"))
    assert 'name="event"' not in page and 'name="contact"' not in page


def test_the_audit_cannot_be_deleted(operator):
    registration = enroll(make_contact(), make_event())
    step = Step.objects.filter(registration=registration).first()
    assert step is not None
    assert "delete_selected" not in text(operator.get("/admin/drip/step/"))
    assert "delete_selected" not in text(operator.get("/admin/drip/message/"))
    assert operator.get(f"/admin/drip/step/{step.pk}/delete/").status_code == 403
    message = Message.objects.create(contact=registration.contact, channel=Channel.EMAIL, template_type="welcome")
    assert operator.get(f"/admin/drip/message/{message.pk}/delete/").status_code == 403
    page = text(operator.get(f"/admin/drip/message/{message.pk}/change/"))
    assert "Internals" in page and "collapse" in page  # claim token, rate slot, lost claims folded away


def test_the_header_says_drip_and_the_beat_tables_are_for_superusers(operator, client):
    assert "Drip" in text(operator.get("/admin/")) and "Periodic tasks" in text(operator.get("/admin/"))
    staff = get_user_model().objects.create_user("staff", "s@example.com", "pw", is_staff=True)
    staff.user_permissions.set(Permission.objects.all())
    client.force_login(staff)
    index = text(client.get("/admin/"))
    assert "Periodic tasks" not in index and "Registrations" in index
    assert client.get("/admin/django_celery_beat/periodictask/").status_code == 403


def test_a_second_contact_with_the_same_email_is_warned_about(operator):
    make_contact(email="twin@example.com", external_id="first")
    page = text(operator.post("/admin/drip/contact/add/", {
        "external_id": "second", "email": "TWIN@example.com", "phone": "", "first_name": "T", "last_name": "",
        "timezone": "UTC", "consents-TOTAL_FORMS": "0", "consents-INITIAL_FORMS": "0",
    }, follow=True))
    assert "Another contact already has this email or phone (first)" in page


def test_an_events_page_shows_its_funnel_chart_and_next_due(operator):
    event = make_event()
    for consent in (True, False):
        registration = enroll(make_contact(sms_consent=consent), event)
        welcome = Step.objects.get(registration=registration, key="welcome")
        Step.objects.filter(pk=welcome.pk).update(status=Step.Status.DONE)
        Message.objects.create(step=welcome, contact=registration.contact, registration=registration, channel=Channel.EMAIL,
                               template_type="welcome", status=Message.Status.SENT if consent else Message.Status.SKIPPED,
                               error="" if consent else "no email consent")
    page = text(operator.get(f"/admin/drip/event/{event.pk}/change/"))
    assert "<svg" in page and "funnel chart" in page
    assert "1 × no email consent" in page
    assert "Next due:</strong> reminder_24h" in page
    assert "EST" in page or "EDT" in page


def test_a_funnel_with_only_a_held_message_left_says_it_waits(operator):
    event = make_event()
    registration = register_quietly(make_contact(), event)
    held_until = timezone.now() + timedelta(hours=5)
    Message.objects.create(contact=registration.contact, registration=registration, channel=Channel.SMS,
                           template_type="reengagement", status=Message.Status.QUEUED, next_attempt_at=held_until, held_until=held_until,
                           error="held for quiet hours until 08:00 America/New_York")
    page = text(operator.get(f"/admin/drip/event/{event.pk}/change/"))
    assert "nothing pending" not in page
    assert "1 message waiting to be sent" in page


def test_the_index_shows_what_needs_attention(operator):
    contact = make_contact()
    Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", status=Message.Status.FAILED,
                           error="provider said no")
    Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", status=Message.Status.FAILED,
                           error="outcome unknown: timed out after the request was sent", error_class=Message.ErrorClass.OUTCOME_UNKNOWN)
    registration = enroll(make_contact(), make_event())
    Step.objects.filter(registration=registration, key="reminder_24h").update(due_at=timezone.now() - timedelta(minutes=5))
    page = text(operator.get("/admin/"))
    assert "Needs attention" in page
    for label in ("failed messages in the last 24 h", "steps overdue", "outcome is unknown", "last beat dispatch"):
        assert label in page
    from drip.doors.console.attention import needs_attention
    counts = [row["count"] for row in needs_attention()["rows"]]
    assert counts == [2, 1, 1]  # both failed; one of them with its outcome unknown
    for row in needs_attention()["rows"]:
        assert operator.get(row["url"]).status_code == 200


def test_the_template_preview_renders_each_template_with_sms_segments(operator):
    page = text(operator.get("/admin/drip/message/preview/"))
    assert "reminder_24h (sms)" in page and "welcome (email)" in page and "welcome (sms)" not in page
    sms = text(operator.get("/admin/drip/message/preview/?template=reminder_24h:sms"))
    assert "GSM-7" in sms and "segment" in sms and "Sample webinar" in sms
    registration = enroll(make_contact(timezone="Asia/Tokyo"), make_event(title="Tokyo talk"))
    email = text(operator.get(f"/admin/drip/message/preview/?template=welcome:email&registration={registration.pk}"))
    assert "Tokyo talk" in email and "JST" in email
    assert "No registration has id 999999" in text(operator.get("/admin/drip/message/preview/?template=welcome:email&registration=999999"))


def test_send_a_test_to_me_goes_through_the_real_sender(worker, operator, providers):
    event = make_event(title="Real event")
    registration = register_quietly(make_contact(), event)  # no funnel: the test is the only email
    page = text(operator.post("/admin/drip/message/preview/", {"template": "welcome:email", "send_test": "1",
                                                               "registration": registration.pk}))
    assert "marked step type “test”" in page
    message = Message.objects.get(step_type="test")
    assert message.to == "op@example.com" and message.contact.external_id == "operator-op"
    wait_until(lambda: Message.objects.filter(pk=message.pk, status=Message.Status.SENT).exists())
    [received] = providers.wait_for(1, kind="email")
    assert "Real event" in received.subject  # about the event previewed
    assert event.registrations.count() == 1  # the real event gains no registration
    # The test copy of the event is never offered where an operator picks an event.
    from drip.doors.console.preview import enrollable_events

    assert list(enrollable_events()) == [event]


def test_a_test_of_the_sample_is_about_the_sample(worker, operator, providers):
    make_event(title="Real event")
    text(operator.post("/admin/drip/message/preview/", {"template": "welcome:email", "send_test": "1"}))
    [received] = providers.wait_for(1, kind="email")
    assert "Sample webinar" in received.subject and "Real event" not in received.subject


def upload(client, event, text: str, **extra: str):
    from django.core.files.uploadedfile import SimpleUploadedFile
    return client.post("/admin/drip/contact/import/", {
        "event": event.pk, "file": SimpleUploadedFile("people.csv", text.encode(), content_type="text/csv"), **extra,
    })


CSV_OK = """email,phone,first_name,last_name,timezone,email_consent,sms_consent
grace@example.com,+14155550188,Grace,Hopper,America/New_York,yes,no
alan@example.com,,Alan,Turing,Europe/London,yes,
"""


def test_a_csv_import_previews_every_rows_error_and_writes_nothing(operator):
    event = make_event()
    bad = ("email,phone,timezone,email_consent\n"
           "ok@example.com,,UTC,yes\n"
           "not-an-email,,UTC,yes\n"
           "b@example.com,+1 555,UTC,yes\n"
           "c@example.com,,Mars/Olympus,maybe\n"
           "ok@example.com,,UTC,yes\n")
    page = text(upload(operator, event, bad))
    assert "4 row(s) have errors" in page and "Nothing was written" in page
    assert "email:" in page and "phone:" in page and "email_consent must be yes or no" in page
    assert "the same contact as line 2" in page
    assert 'name="confirm"' not in page
    assert not Registration.objects.exists() and not Contact.objects.exists()
    assert "unknown column(s): shoe_size" in text(upload(operator, event, "email,shoe_size\na@example.com,9\n"))


def test_a_csv_import_enrolls_every_row_through_the_intake_at_once(operator):
    event = make_event()
    existing = make_contact(email="alan@example.com", external_id="alan-1", email_consent=False, sms_consent=False)
    page = text(upload(operator, event, CSV_OK))
    assert "All 2 row(s) are valid" in page and 'name="confirm"' in page and not Registration.objects.exists()
    done = operator.post("/admin/drip/contact/import/", {"event": event.pk, "csv_text": CSV_OK, "confirm": "1"}, follow=True)
    assert "Imported 2 row(s)" in text(done)
    grace = Contact.objects.get(email="grace@example.com")
    assert grace.phone == "+14155550188" and grace.timezone == "America/New_York"
    assert has_consent(grace, Channel.EMAIL) and not has_consent(grace, Channel.SMS)
    assert Contact.objects.filter(email="alan@example.com").count() == 1  # matched by email, not a twin
    assert has_consent(existing, Channel.EMAIL)
    assert set(Registration.objects.values_list("contact__email", flat=True)) == {"grace@example.com", "alan@example.com"}
    assert Step.objects.filter(registration__event=event, key="welcome").count() == 2
