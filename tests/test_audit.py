"""The console's audit trail: every action and custom view that changes data leaves Django
admin-log entries (who, when, what, how many rows), shown on the object's history page and,
for superusers only, in the admin log's own filterable list."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.utils import timezone

from drip.domain.consent import active_suppression, has_consent, record_consent
from drip.models import (
    Channel,
    ConsentRecord,
    ConsoleJob,
    Contact,
    Event,
    InboundSms,
    Message,
    Registration,
    Step,
    Suppression,
)
from tests.factories import enroll, make_contact, make_event

User = get_user_model()


@pytest.fixture
def operator(client, db) -> Any:
    user = User.objects.create_superuser("op", "op@example.com", "a-long-passphrase-42")
    client.force_login(user)
    return user


def entries(obj: Model) -> list[LogEntry]:
    kind = ContentType.objects.get_for_model(type(obj))
    return list(LogEntry.objects.filter(content_type=kind, object_id=str(obj.pk)).order_by("action_time", "id"))


def the_entry(obj: Model, user: Any, *words: str) -> LogEntry:
    """The one entry for `obj` whose message has every word, by `user`."""
    found = [e for e in entries(obj) if all(w in e.change_message for w in words)]
    assert len(found) == 1, [e.change_message for e in entries(obj)]
    assert found[0].user_id == user.pk and found[0].action_time is not None
    return found[0]


def test_cancelling_an_event_is_logged_with_its_count(client, operator):
    event = make_event()
    for _ in range(2):
        enroll(make_contact(sms_consent=False), event)
    open_steps = Step.objects.filter(registration__event=event, status__in=Step.OPEN).count()
    client.post("/admin/drip/event/", {"action": "cancel_events", "_selected_action": [event.pk]})
    entry = the_entry(event, operator, "cancel_events")
    assert entry.action_flag == CHANGE and f"{open_steps} step(s) cancelled" in entry.change_message
    history = client.get(f"/admin/drip/event/{event.pk}/history/").content.decode()
    assert "cancel_events" in history and "op" in history


def test_sending_a_message_again_is_logged(client, operator, django_capture_on_commit_callbacks):
    contact = make_contact()
    message = Message.objects.create(contact=contact, channel=Channel.EMAIL, template_type="welcome", to=contact.email,
                                     status=Message.Status.FAILED, error="outcome unknown", error_class=Message.ErrorClass.OUTCOME_UNKNOWN)
    with django_capture_on_commit_callbacks():
        client.post("/admin/drip/message/", {"action": "send_again", "_selected_action": [message.pk]})
    assert "1 failed message(s) re-queued" in the_entry(message, operator, "send_again").change_message


def test_moving_a_registration_is_logged_on_both(client, operator):
    registration = enroll(make_contact(), make_event())
    target = make_event()
    client.post("/admin/drip/registration/", {
        "action": "move_to_event", "_selected_action": [registration.pk], "event": target.pk, "apply": "1",
    })
    assert target.external_id in the_entry(registration, operator, "move_to_event").change_message
    moved = Registration.objects.get(event=target)
    assert the_entry(moved, operator, "move_to_event").action_flag == ADDITION


def test_recording_an_inbound_sms_as_opt_out_is_logged(client, operator):
    contact = make_contact()
    inbound = InboundSms.objects.create(from_number=contact.phone, body="no more texts", provider_sid="SMa1")
    client.post("/admin/drip/inboundsms/", {"action": "record_as_opt_out", "_selected_action": [inbound.pk]})
    assert "1 contact(s) revoked" in the_entry(inbound, operator, "record_as_opt_out").change_message


def test_running_a_step_now_is_logged(client, operator, django_capture_on_commit_callbacks):
    registration = enroll(make_contact(), make_event())
    step = Step.objects.get(registration=registration, key="reminder_24h")
    with django_capture_on_commit_callbacks():
        client.post("/admin/drip/step/", {"action": "run_now", "_selected_action": [step.pk]})
    assert "1 of 1 open step(s) enqueued" in the_entry(step, operator, "run_now").change_message


def test_lifting_a_suppression_needs_a_written_reason_and_is_logged(client, operator):
    contact = make_contact()
    record_consent(contact, Channel.EMAIL, False, ConsentRecord.Source.PROVIDER, detail="postmark:SpamComplaint")
    suppression = Suppression.objects.get(lifted_at__isnull=True)
    lift = {"action": "lift_suppressions", "_selected_action": [suppression.pk], "apply": "1"}
    page = client.post("/admin/drip/suppression/", {**lift, "reason": "   "})
    assert page.status_code == 200 and "This field is required" in page.content.decode()
    assert active_suppression(Channel.EMAIL, contact.email) is not None and not entries(suppression)
    client.post("/admin/drip/suppression/", {**lift, "reason": "she called: the complaint was a mis-click"})
    suppression.refresh_from_db()
    assert (suppression.lifted_by, suppression.lift_reason) == ("op", "she called: the complaint was a mis-click")
    assert "mis-click" in the_entry(suppression, operator, "lift_suppressions").change_message


def test_erasing_a_contact_asks_first_then_is_logged_without_the_person(client, operator):
    contact = make_contact(first_name="Ada", email="ada@example.com")
    erase = {"action": "erase_contacts", "_selected_action": [contact.pk]}
    confirm = client.post("/admin/drip/contact/", erase)
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    assert Contact.objects.get(pk=contact.pk).erased_at is None
    client.post("/admin/drip/contact/", {**erase, "apply": "1"})
    contact.refresh_from_db()
    assert contact.erased_at is not None and contact.email == ""
    entry = the_entry(contact, operator, "erase_contacts")
    assert "ada" not in entry.object_repr.lower() and "ada" not in entry.change_message.lower()
    assert client.get(f"/admin/drip/contact/{contact.pk}/delete/").status_code == 403  # erased, never deleted


def test_a_consent_grant_over_a_suppression_needs_a_reason_and_lifts_it(client, operator):
    contact = make_contact()
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    form = {"external_id": contact.external_id, "email": contact.email, "phone": contact.phone,
            "first_name": contact.first_name, "last_name": "", "timezone": contact.timezone,
            "email_consent": "on", "sms_consent": "on",
            "consents-TOTAL_FORMS": "0", "consents-INITIAL_FORMS": "0"}
    refused = client.post(f"/admin/drip/contact/{contact.pk}/change/", form)
    assert refused.status_code == 200 and "give a reason to lift it" in refused.content.decode()
    assert not has_consent(contact, Channel.SMS)
    saved = client.post(f"/admin/drip/contact/{contact.pk}/change/", {**form, "consent_reason": "asked in person"})
    assert saved.status_code == 302
    assert has_consent(contact, Channel.SMS) and active_suppression(Channel.SMS, contact.phone) is None
    lifted = Suppression.objects.get(channel=Channel.SMS)
    assert lifted.lift_reason == "asked in person" and "op" in lifted.lifted_by


def test_the_admin_log_is_a_list_for_superusers_only(client, operator):
    event = make_event()
    client.post("/admin/drip/event/", {"action": "cancel_events", "_selected_action": [event.pk]})
    listing = client.get("/admin/admin/logentry/?action_flag=2")
    assert listing.status_code == 200 and "cancel_events" in listing.content.decode()
    staff = User.objects.create_user("staff", "staff@example.com", "a-long-passphrase-42", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label__in=["drip", "admin"]))
    client.force_login(staff)
    assert client.get("/admin/admin/logentry/").status_code == 403
    assert client.get(f"/admin/drip/event/{event.pk}/history/").status_code == 200  # its own history is theirs
    assert Event.objects.get(pk=event.pk).status == Event.Status.CANCELLED


def test_running_a_stalled_job_again_needs_the_permission_that_started_it_and_is_logged(client, operator, published):
    event = make_event()
    job = ConsoleJob.objects.create(kind=ConsoleJob.Kind.COMPLETE, event=event, status=ConsoleJob.Status.RUNNING,
                                    started_at=timezone.now() - timedelta(hours=1), total=3)
    url = f"/admin/drip/consolejob/{job.pk}/progress/"
    importer = User.objects.create_user("importer", "i@example.com", "a-long-passphrase-42", is_staff=True)
    importer.user_permissions.set(Permission.objects.filter(
        content_type__app_label="drip", codename__in=["view_consolejob", "add_contact", "change_contact"]))
    client.force_login(importer)
    page = client.get(url).content.decode()
    assert "Run it again" not in page  # a completion is not theirs to start
    assert client.post(url, {"retry": "1"}).status_code == 403 and not entries(job)
    client.force_login(operator)
    assert "Run it again" in client.get(url).content.decode()
    assert client.post(url, {"retry": "1"}).status_code == 302
    assert [name for name, _, _ in published].count("drip.tasks.run_console_job") == 1
    the_entry(job, operator, "run it again")
