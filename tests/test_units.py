"""Pure pieces: due-time arithmetic, consent rules, rendering, error classes, settings."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from anymail.exceptions import AnymailRecipientsRefused
from django.conf import settings as django_settings
from twilio.base.exceptions import TwilioRestException

from campaigns.funnels import POST_EVENT, PRE_EVENT
from drip.delivery.channels import classify
from drip.delivery.rendering import RenderError, format_when, render_message
from drip.domain.consent import Outcome, has_consent, record_consent
from drip.engine import services
from drip.engine.planning import build_step
from drip.models import Channel, ConsentRecord, Message, Step, Suppression
from tests.factories import enroll, make_contact, make_event

UTC = UTC
START = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


def test_it_shows_times_in_the_recipients_zone():
    assert format_when(START, "America/New_York") == "Tue, Dec 1 at 3:00 PM EST"
    assert format_when(START, "Europe/Paris") == "Tue, Dec 1 at 9:00 PM CET"
    assert format_when(START, "Asia/Tokyo") == "Wed, Dec 2 at 5:00 AM JST"


@time_machine.travel(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), tick=False)
def test_due_times_come_from_the_start_and_the_offset(settings):
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    steps = {d.key: build_step(PRE_EVENT, d, 1, START, now) for d in PRE_EVENT.steps}
    assert steps["welcome"].due_at == now
    assert steps["reminder_24h"].due_at == START - timedelta(hours=24)
    assert steps["reminder_1h"].due_at == START - timedelta(hours=1)
    assert {s.expires_at for s in steps.values()} == {START}
    assert {s.status for s in steps.values()} == {Step.Status.PENDING}


def test_the_time_scale_divides_every_offset(settings):
    settings.DRIP_TIME_SCALE = 3600
    now = START - timedelta(minutes=1)
    step = build_step(PRE_EVENT, PRE_EVENT.step("reminder_24h"), 1, START, now)
    assert step.due_at == START - timedelta(seconds=24)
    done = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    nurture = build_step(POST_EVENT, POST_EVENT.step("nurture"), 1, done, done)
    assert nurture.due_at == done + timedelta(seconds=72) and nurture.expires_at is None


def test_a_step_past_due_when_planned_is_skipped_but_the_first_step_is_sent_at_once():
    now = START - timedelta(hours=2)
    late = build_step(PRE_EVENT, PRE_EVENT.step("reminder_24h"), 1, START, now)
    assert late.status == Step.Status.SKIPPED and "already past when planned" in late.reason
    completed = START - timedelta(days=2)
    first = build_step(POST_EVENT, POST_EVENT.step("sorry_missed"), 1, completed, START)
    assert first.status == Step.Status.PENDING and first.due_at == START


def test_an_api_grant_never_lifts_a_recipient_suppression(db):
    contact = make_contact(sms_consent=False)
    record_consent(contact, Channel.SMS, True, ConsentRecord.Source.API)
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    assert record_consent(contact, Channel.SMS, True, ConsentRecord.Source.API).outcome is Outcome.REFUSED
    assert record_consent(contact, Channel.SMS, True, ConsentRecord.Source.ADMIN).outcome is Outcome.REFUSED  # no reason given
    assert not has_consent(contact, Channel.SMS)
    # The recipient's own undo lifts their STOP: the producer's grant before it is in force again.
    assert record_consent(contact, Channel.SMS, True, ConsentRecord.Source.RECIPIENT, detail="twilio:START").granted
    assert has_consent(contact, Channel.SMS)
    assert contact.consents.filter(channel=Channel.SMS).count() == 1  # the grant; the STOP is the address's
    stop = Suppression.objects.get(channel=Channel.SMS)
    assert (stop.source, stop.detail, stop.lifted_at is not None) == ("recipient", "twilio:STOP", True)


def message_for(contact, template_type="welcome", channel=Channel.EMAIL) -> Message:
    registration = enroll(contact, make_event(starts_at=START, title="Tea & <Cake>"))
    return Message(contact=contact, registration=registration, channel=channel, template_type=template_type)


def test_rendering_escapes_html_and_personalizes_in_the_contacts_zone(db):
    contact = make_contact(first_name="<b>Ada</b>", timezone="Europe/Paris")
    rendered = render_message(message_for(contact))
    assert rendered.subject == "You're registered: Tea & <Cake>"
    assert "Hi <b>Ada</b>," in rendered.text
    assert "&lt;b&gt;Ada&lt;/b&gt;" in rendered.html and "<b>Ada</b>" not in rendered.html
    assert "Tue, Dec 1 at 9:00 PM CET" in rendered.text
    sms = render_message(message_for(make_contact(), "reminder_1h", Channel.SMS))
    assert sms.text.startswith("Tea & <Cake> starts in 1 hour (Tue, Dec 1 at 3:00 PM EST)")


def test_a_missing_template_or_variable_is_a_clear_error(db, tmp_path, settings):
    with pytest.raises(RenderError, match="template missing: templates/messages/nope/subject.txt"):
        render_message(message_for(make_contact(), "nope"))
    direct = Message(contact=make_contact(), channel=Channel.EMAIL, template_type="welcome")
    with pytest.raises(RenderError, match="'None' has no attribute 'title'"):
        render_message(direct)


def test_it_classifies_provider_errors():
    assert classify(AnymailRecipientsRefused("bad")).permanent
    opted_out = classify(TwilioRestException(400, "u", msg="opted out", code=21610))
    assert opted_out.permanent and opted_out.revoke_consent
    assert classify(TwilioRestException(400, "u", msg="invalid", code=21211)).permanent
    assert not classify(TwilioRestException(503, "u", msg="down", code=20500)).permanent
    assert not classify(TwilioRestException(429, "u", msg="slow down", code=20429)).permanent
    assert not classify(ConnectionRefusedError("refused")).permanent


@pytest.mark.parametrize("env,message", [
    ({"SMS_BACKEND": "twilio", "DEBUG": "1"}, "SMS_BACKEND=twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN"),
    ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY must be set"),
    ({"DEBUG": "1", "SECRET_KEY": ""}, "SECRET_KEY must be set"),  # no development fallback either
    ({"DEBUG": "1", "DRIP_TIME_SCALE": "fast"}, "DRIP_TIME_SCALE must be a number"),
    ({"DEBUG": "1", "SMS_BACKEND": "carrier-pigeon"}, "SMS_BACKEND must be 'console' or 'twilio'"),
])
def test_a_missing_production_setting_stops_start_up_with_one_sentence(env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "SMS_", "SECRET_", "DEBUG", "DRIP_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**clean, "DJANGO_SETTINGS_MODULE": "drip.settings", "SECRET_KEY": "a-test-key", **env},
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_the_beat_schedule_is_registered_in_code_and_reaches_the_database_scheduler(transactional_db):
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from celery_app import app

    assert {e["task"] for e in app.conf.beat_schedule.values()} == {
        "drip.tasks.dispatch_due_steps", "drip.tasks.reconcile", "drip.tasks.fail_over_dead_workers",
    }
    DatabaseScheduler(app=app)
    assert set(PeriodicTask.objects.values_list("task", flat=True)) >= {"drip.tasks.dispatch_due_steps", "drip.tasks.reconcile"}


def test_every_process_enqueues_to_the_configured_broker():
    """A web process never imports celery_app itself; its tasks must still reach Redis."""
    code = (
        "import django; django.setup(); from django.conf import settings; from drip.tasks import run_steps; "
        "print(run_steps.app.main, run_steps.app.conf.broker_url == settings.CELERY_BROKER_URL)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.stdout.split() == ["drip", "True"], result.stderr


def test_a_reschedule_after_the_welcome_ran_does_not_drop_its_message(db):
    from drip.domain.policy import step_block

    registration = enroll(make_contact(), make_event(starts_in=3600 * 48))
    event = registration.event
    services.reschedule(event, event.starts_at + timedelta(days=1))
    welcome = Step.objects.get(registration=registration, key="welcome", plan_version=1)
    Step.objects.filter(pk=welcome.pk).update(status=Step.Status.DONE)  # it ran before the move
    welcome.refresh_from_db()
    assert step_block(welcome, welcome.due_at) is None
    old_reminder = Step.objects.get(registration=registration, key="reminder_24h", plan_version=1)
    assert "planned for an old event start" in step_block(old_reminder, old_reminder.due_at).reason


@pytest.mark.skipif(
    "sqlite" in django_settings.DATABASES["default"]["ENGINE"],
    reason="a SQLite connection has no server to lose (Django reports it always usable)",
)
def test_a_broken_reused_db_connection_is_dropped_before_the_next_task(transactional_db):
    import threading

    from django.db import connection

    from drip.tasks import drop_broken_db_connections

    outcome: list[object] = []

    def worker_thread() -> None:
        connection.ensure_connection()
        connection.connection.close()  # the server went away under a reused connection
        connection.errors_occurred = True  # what Django records when a query meets the break
        drop_broken_db_connections()
        outcome.append(connection.connection)
        outcome.append(Step.objects.count())  # and the next task's query just works
        connection.close()

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join()
    assert outcome == [None, 0]
