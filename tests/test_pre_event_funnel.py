"""The pre-event funnel end to end: a real worker, real Redis, real database, and the real
anymail/twilio clients talking to the loopback stub."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from drip.domain.consent import record_consent
from drip.engine import services
from drip.models import Channel, ConsentRecord, Message, Step
from tests.factories import enroll, make_contact, make_event
from tests.helpers import settled, wait_until

ON_TIME = 0.5  # seconds: how late a message may reach the provider after its step is due


def test_it_sends_the_welcome_at_once_and_the_reminders_on_time(worker, beat, providers, scaled):
    scaled.DRIP_ENQUEUE_HORIZON = 1  # reminders wait in the database until the dispatcher claims them
    # 1 h of funnel time is half a second here: the 1 h reminder has that long before the start.
    scaled.DRIP_TIME_SCALE = 7200
    contact = make_contact()
    registration = enroll(contact, make_event(starts_in=14))
    started = time.time()

    got = providers.wait_for(5, timeout=30)
    wait_until(lambda: settled(registration))

    assert [(r.kind, r.subject or r.text[:9]) for r in got][0] == ("email", f"You're registered: {registration.event.title}")
    assert got[0].at - started < 1.5
    sent = {m.provider_message_id: m for m in Message.objects.select_related("step")}
    order = [(sent[r.provider_id].step.key, r.kind) for r in got]
    assert [k for k, _ in order] == ["welcome", "reminder_24h", "reminder_24h", "reminder_1h", "reminder_1h"]
    assert sorted(order[1:3]) == [("reminder_24h", "email"), ("reminder_24h", "sms")]
    for received in got[1:]:
        due = sent[received.provider_id].step.due_at.timestamp()
        assert 0 <= received.at - due < ON_TIME, (sent[received.provider_id].step.key, received.at - due)
    assert all(r.to in (contact.email, contact.phone) for r in got)
    assert Message.objects.filter(status=Message.Status.SENT).count() == 5
    assert set(Step.objects.values_list("status", flat=True)) == {Step.Status.DONE}


def test_it_sends_no_sms_without_sms_consent(worker, providers, scaled):
    contact = make_contact(sms_consent=False)
    registration = enroll(contact, make_event(starts_in=5))
    wait_until(lambda: settled(registration))
    assert {r.kind for r in providers.messages()} == {"email"}
    assert len(providers.messages("email")) == 3
    skipped = Message.objects.filter(channel=Channel.SMS)
    assert [(m.status, m.error) for m in skipped] == [(Message.Status.SKIPPED, "no sms consent")] * 2


def test_it_sends_no_email_without_email_consent(worker, providers, scaled):
    contact = make_contact(email_consent=False)
    registration = enroll(contact, make_event(starts_in=5))
    wait_until(lambda: settled(registration))
    assert [r.kind for r in providers.messages()] == ["sms", "sms"]
    assert set(Message.objects.filter(channel=Channel.EMAIL).values_list("error", flat=True)) == {"no email consent"}


def test_it_honours_consent_revoked_between_planning_and_sending(worker, providers, scaled):
    contact = make_contact()
    registration = enroll(contact, make_event(starts_in=6))
    providers.wait_for(1)  # the welcome went out with consent
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="twilio:STOP")
    wait_until(lambda: settled(registration))
    assert [r.kind for r in providers.messages()] == ["email", "email", "email"]


def test_rescheduling_moves_the_reminders(worker, providers, scaled):
    contact = make_contact()
    event = make_event(starts_in=60)  # reminders due in 56 s and ~60 s: far away
    registration = enroll(contact, event)
    providers.wait_for(1)
    services.reschedule(event, timezone.now() + timedelta(seconds=6))

    providers.wait_for(5, timeout=15)
    wait_until(lambda: settled(registration))
    steps = Step.objects.filter(registration=registration)
    old = steps.filter(plan_version=1).exclude(key="welcome")
    assert {(s.status, s.reason) for s in old} == {
        (Step.Status.CANCELLED, f"event rescheduled to {event.starts_at.isoformat()}: re-planned")
    }
    new = steps.filter(plan_version=2)
    assert sorted(s.key for s in new) == ["reminder_1h", "reminder_24h"]
    assert all(s.anchor_at == event.starts_at and s.status == Step.Status.DONE for s in new)
    assert len(providers.messages()) == 5  # the welcome is not sent again


def test_a_reminder_skipped_as_too_late_comes_back_when_the_event_moves_later(db):
    event = make_event(starts_in=3600 * 10)  # enrolled 10 h before: no time for the 24 h reminder
    registration = enroll(make_contact(), event)
    [skipped] = Step.objects.filter(registration=registration, key="reminder_24h")
    assert skipped.status == Step.Status.SKIPPED and "already past when planned" in skipped.reason
    Step.objects.filter(registration=registration, key="welcome").update(status=Step.Status.DONE)  # as a worker would

    services.reschedule(event, timezone.now() + timedelta(days=3))
    revived = Step.objects.get(registration=registration, key="reminder_24h", plan_version=2)
    assert (revived.status, revived.due_at, revived.anchor_at) == (
        Step.Status.PENDING, event.starts_at - timedelta(hours=24), event.starts_at
    )
    skipped.refresh_from_db()
    assert skipped.status == Step.Status.SKIPPED  # the old plan's record stays as it was
    assert Step.objects.filter(registration=registration, key="welcome").count() == 1

    # Moved closer again: the new plan is skipped too, and nothing is planned twice.
    services.reschedule(event, timezone.now() + timedelta(hours=5))
    latest = Step.objects.filter(registration=registration, key="reminder_24h").order_by("-plan_version")
    assert [(s.plan_version, s.status) for s in latest] == [
        (3, Step.Status.SKIPPED), (2, Step.Status.CANCELLED), (1, Step.Status.SKIPPED)
    ]


@pytest.mark.parametrize("what", ["event", "registration"])
def test_cancelling_stops_the_reminders(worker, providers, scaled, what):
    contact = make_contact()
    event = make_event(starts_in=6)
    registration = enroll(contact, event)
    providers.wait_for(1)
    if what == "event":
        services.cancel_event(event)
    else:
        services.cancel_registration(registration)
    time.sleep(6.5)  # past every reminder's due time
    assert len(providers.messages()) == 1
    reminders = Step.objects.filter(registration=registration).exclude(key="welcome")
    assert {(s.status, s.reason) for s in reminders} == {(Step.Status.CANCELLED, f"{what} cancelled")}


def test_late_enrollment_skips_the_past_reminders_with_a_reason(worker, providers, scaled):
    # Event in 2 s: the 24 h reminder (4 s before) is already past; the 1 h one is not.
    registration = enroll(make_contact(), make_event(starts_in=2))
    wait_until(lambda: settled(registration))
    steps = {s.key: s for s in Step.objects.filter(registration=registration)}
    assert steps["reminder_24h"].status == Step.Status.SKIPPED
    assert "already past when planned" in steps["reminder_24h"].reason
    assert steps["welcome"].status == steps["reminder_1h"].status == Step.Status.DONE
    assert sorted(Message.objects.values_list("template_type", "channel")) == [
        ("reminder_1h", "email"), ("reminder_1h", "sms"), ("welcome", "email")
    ]


def test_enrolling_after_the_start_plans_nothing(transactional_db, scaled):
    registration = enroll(make_contact(), make_event(starts_in=-60))
    assert not Step.objects.filter(registration=registration).exists()


def test_nothing_is_sent_after_expiry(transactional_db, providers, celery_app, scaled):
    """Steps enqueued while no worker runs; the worker comes back after the event started."""
    from celery.contrib.testing.worker import start_worker

    from tests.helpers import QUEUES, flush_broker

    flush_broker()
    registration = enroll(make_contact(), make_event(starts_in=1.5))
    time.sleep(2)
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False, queues=QUEUES):
        wait_until(lambda: settled(registration))
    assert providers.messages() == []
    steps = {s.key: s for s in Step.objects.filter(registration=registration)}
    assert {s.status for s in steps.values()} == {Step.Status.SKIPPED}
    assert steps["welcome"].reason.startswith("expired at")
    assert steps["reminder_1h"].reason.startswith("expired at")
    assert "already past when planned" in steps["reminder_24h"].reason
