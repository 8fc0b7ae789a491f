"""Messages rendered ahead: the step task renders a funnel message when it plans it
(DRIP_STEP_LEAD before the due time), so that at the due instant only the send is left. The
sender sends that rendering only while it was made from the same data as now; an SMS's
opt-out notice is decided at the send. In-process, with the recording transport
(the `recording` fixture)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from drip.delivery.rendering import render_message, templates_version
from drip.delivery.sender import send_batch
from drip.models import Channel, Message
from tests.factories import enroll, make_contact, make_event
from tests.recording import RecordingTransport
from tests.test_fast_sender import fresh, funnel_messages


def _reminders(title: str = "Tea time", **contact: Any) -> tuple[Message, Message]:
    registration = enroll(make_contact(**contact), make_event(starts_in=3600 * 30, title=title))
    email, sms = funnel_messages(registration, "reminder_24h")
    assert (email.channel, sms.channel) == (Channel.EMAIL, Channel.SMS)
    return email, sms


def test_the_step_task_renders_its_messages_and_the_sender_sends_that(db, recording: RecordingTransport) -> None:
    email, sms = _reminders()
    assert email.status == Message.Status.QUEUED and email.rendered_from and sms.rendered_from
    assert email.subject and "Tea time" in email.body and "Tea time" in email.html and "/u/" in email.html
    # The SMS is stored without the opt-out notice: whether it is the first to reach the
    # number is decided when it is sent.
    assert "Tea time" in sms.body and "Reply STOP" not in sms.body
    # The stored rendering is what goes out (marked here, so that a rendering made again
    # would show): nothing is rendered twice.
    Message.objects.filter(pk=email.pk).update(subject="Rendered ahead: Tea time")
    send_batch([email.pk])
    send_batch([sms.pk])
    sent = {call.channel: call for call in recording.calls}
    assert sent[Channel.EMAIL].subject == "Rendered ahead: Tea time"
    assert sent[Channel.SMS].text == f"{sms.body} Reply STOP to opt out."
    assert fresh(sms).body == sent[Channel.SMS].text  # the guarded write recorded what was sent


def test_an_event_changed_after_the_step_task_is_rendered_again(db, recording: RecordingTransport) -> None:
    email, sms = _reminders()
    assert email.registration is not None
    event = email.registration.event
    event.title, event.join_url = "Tea time (new room)", "https://example.com/room-2"
    event.save()
    send_batch([email.pk])
    send_batch([sms.pk])
    sent = {call.channel: call for call in recording.calls}
    assert "Tea time (new room)" in sent[Channel.EMAIL].subject and "room-2" in sent[Channel.EMAIL].text
    assert "Tea time (new room)" in sent[Channel.SMS].text and "room-2" in sent[Channel.SMS].text


def test_a_contact_changed_after_the_step_task_is_rendered_again(db, recording: RecordingTransport) -> None:
    email, _ = _reminders(first_name="Ada", timezone="America/New_York")
    contact = email.contact
    assert "Hi Ada," in email.body
    contact.first_name, contact.timezone = "Grace", "Asia/Tokyo"
    contact.save()
    rendered = render_message(fresh(email))
    assert "Hi Grace," in rendered.text and "JST" in rendered.text and "Ada" not in rendered.text


def test_an_sms_to_a_number_already_reached_goes_without_the_notice(db, recording: RecordingTransport) -> None:
    _, first = _reminders(phone="+14155550123")
    send_batch([first.pk])
    _, second = _reminders(phone="+14155550123")
    send_batch([second.pk])
    assert [call.text.endswith("Reply STOP to opt out.") for call in recording.calls] == [True, False]


def test_a_template_that_cannot_render_is_left_to_the_sender(db, recording: RecordingTransport, settings, tmp_path: Path) -> None:
    broken = tmp_path / "messages"
    shutil.copytree(settings.MESSAGE_TEMPLATES_DIR, broken)
    (broken / "reminder_24h" / "sms.txt").write_text("{{ event.no_such_field }}")
    settings.MESSAGE_TEMPLATES_DIR = broken
    from drip.delivery.rendering import environment
    environment.cache_clear()
    try:
        email, sms = _reminders()
        assert email.rendered_from and not sms.rendered_from and sms.body == ""
        send_batch([sms.pk])
        sms = fresh(sms)
        assert sms.status == Message.Status.FAILED and "no_such_field" in sms.error
    finally:
        environment.cache_clear()


def test_changed_templates_change_the_fingerprint(tmp_path: Path, settings) -> None:
    copy = tmp_path / "messages"
    shutil.copytree(settings.MESSAGE_TEMPLATES_DIR, copy)
    before = templates_version(str(copy))
    templates_version.cache_clear()
    assert templates_version(str(copy)) == before  # the same files, the same version
    (copy / "welcome" / "subject.txt").write_text("Welcome, again: {{ event.title }}")
    templates_version.cache_clear()
    assert templates_version(str(copy)) != before
