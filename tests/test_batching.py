"""Batches: steps due at one instant run as one task, messages travel in send batches, and
nothing about a batch may lose a message, send one twice, or let one bad row hold up the
rest."""
from __future__ import annotations

import math
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from drip.delivery.sender import send_batch as send_messages
from drip.domain.consent import ConsentView, record_consent
from drip.engine import services
from drip.engine.steps import run_step_batch as run_steps
from drip.models import MAX_LOST_CLAIMS, Channel, ConsentRecord, Message, Step
from drip.tasks import run_steps as run_steps_task
from drip.tasks import send_messages as send_messages_task
from drip.timer import scheduler
from drip.timer.publish import enqueue_steps
from tests.factories import make_contact, make_event, register_quietly, steps_due_together
from tests.helpers import assert_each_sent_once, flush_broker, wait_until


def tasks_named(published: list, name: str) -> list[list]:
    return [args for task, args, _ in published if task == f"drip.tasks.{name}"]


def test_steps_due_at_one_instant_run_as_one_task_and_send_in_batches(worker, providers, settings, published):
    settings.DRIP_SEND_BATCH = 7
    steps = steps_due_together(20, timezone.now() + timedelta(seconds=1))
    providers.wait_for(40)  # reminder_1h: an email and an SMS each
    wait_until(lambda: Message.objects.filter(status=Message.Status.SENT).count() == 40)
    assert_each_sent_once(providers, 40)
    [batch] = tasks_named(published, "run_steps")
    assert sorted(batch[0]) == sorted(s.pk for s in steps)
    sends = tasks_named(published, "send_messages")
    assert len(sends) == math.ceil(40 / 7) and max(len(args[0]) for args in sends) == 7
    assert set(Step.objects.values_list("status", "attempts")) == {(Step.Status.DONE, 1)}
    assert set(Message.objects.values_list("attempts", flat=True)) == {1}


def test_steps_due_at_different_times_never_wait_for_each_other(transactional_db, settings, published):
    settings.DRIP_STEP_BATCH = 2
    settings.DRIP_STEP_LEAD = 4  # each batch runs that long before its instant
    now = timezone.now().replace(microsecond=0)
    due = [now + timedelta(seconds=s) for s in (30, 10, 30, 20, 30)]
    try:
        enqueue_steps(list(zip(range(1, 6), due, strict=True)))
    finally:
        flush_broker()
    batches = [(args[0], eta) for task, args, eta in published if task == "drip.tasks.run_steps"]
    assert batches == [
        ([2], (now + timedelta(seconds=6)).isoformat()),
        ([4], (now + timedelta(seconds=16)).isoformat()),
        ([1, 3], (now + timedelta(seconds=26)).isoformat()),  # same instant, cut at DRIP_STEP_BATCH
        ([5], (now + timedelta(seconds=26)).isoformat()),
    ]


def test_overlapping_and_repeated_batches_send_each_message_once(worker, providers, settings):
    steps = steps_due_together(6, timezone.now() + timedelta(hours=1), key="welcome")
    Step.objects.update(due_at=timezone.now(), status=Step.Status.ENQUEUED)
    ids = [s.pk for s in steps]
    settings.DRIP_SEND_BATCH = 1  # the steps' own send tasks: one message each
    providers.slow_down(0.1)
    for batch in (ids[:4], ids[:4], ids[2:]):
        run_steps_task.delay(batch)
    wait_until(lambda: Message.objects.count() == 6)
    # While the first sends are still in flight, three more batches race for the same rows.
    messages = list(Message.objects.values_list("id", flat=True))
    for batch in (messages, messages[::-1], messages[:3]):
        send_messages_task.delay(batch)
    providers.wait_for(6)
    wait_until(lambda: not Message.objects.exclude(status=Message.Status.SENT).exists())
    time.sleep(0.5)  # let any late duplicate reach the stub
    assert_each_sent_once(providers, 6)
    assert set(Step.objects.values_list("attempts", flat=True)) == {1}
    assert set(Message.objects.values_list("attempts", flat=True)) == {1}


def test_a_step_whose_check_crashes_fails_alone(db, monkeypatch):
    steps = steps_due_together(3, timezone.now() + timedelta(hours=1), key="welcome")
    Step.objects.update(due_at=timezone.now(), status=Step.Status.ENQUEUED)
    bad = steps[1].pk
    from drip.engine import steps as step_module

    real = step_module.step_block

    def crash_on_one(step, now):
        if step.pk == bad:
            raise RuntimeError("a bug in a check")
        return real(step, now)

    monkeypatch.setattr(step_module, "step_block", crash_on_one)
    run_steps([s.pk for s in steps])
    outcome = dict(Step.objects.values_list("id", "status"))
    assert outcome == {steps[0].pk: Step.Status.DONE, bad: Step.Status.FAILED, steps[2].pk: Step.Status.DONE}
    assert Step.objects.get(pk=bad).reason == "step check crashed: RuntimeError: a bug in a check"
    assert Message.objects.filter(status=Message.Status.QUEUED).count() == 2


def test_a_send_batch_past_its_time_budget_hands_the_rest_to_a_new_task(worker, providers, settings, published):
    settings.DRIP_SEND_BATCH = 10
    settings.DRIP_SEND_BATCH_SECONDS = 0.3
    settings.DRIP_EMAIL_BATCH_MAX = 1  # a provider taking one message per request (test_email_batch.py: several)
    providers.slow_down(0.1)
    steps_due_together(10, timezone.now(), key="welcome")  # one email each, due now: one batch of 10
    providers.wait_for(10)
    wait_until(lambda: Message.objects.filter(status=Message.Status.SENT).count() == 10)
    assert_each_sent_once(providers, 10)
    sends = tasks_named(published, "send_messages")
    assert len(sends) >= 2 and len(sends[0][0]) == 10
    assert set(sends[1][0]) < set(sends[0][0])  # the tail of the first batch, nothing new
    # Handing back is not an attempt: every message went out on its first.
    assert set(Message.objects.values_list("attempts", flat=True)) == {1}


def test_an_unexpected_error_mid_batch_hands_back_the_rest(db, providers, monkeypatch, django_capture_on_commit_callbacks, published):
    steps_due_together(3, timezone.now() + timedelta(hours=1), key="welcome")
    Step.objects.update(due_at=timezone.now(), status=Step.Status.ENQUEUED)
    run_steps(list(Step.objects.values_list("id", flat=True)))
    first, bad, last = Message.objects.order_by("id")
    from drip.delivery import sender

    real = sender.message_block

    def crash_on_one(message, now, consent=None):
        if message.pk == bad.pk:
            raise ConnectionError("the database went away")
        return real(message, now, consent)

    monkeypatch.setattr(sender, "message_block", crash_on_one)
    with django_capture_on_commit_callbacks() as handed_back, pytest.raises(ConnectionError):
        send_messages([first.pk, bad.pk, last.pk])
    for m in (first, bad, last):
        m.refresh_from_db()
    assert (first.status, first.attempts) == (Message.Status.SENT, 1)
    # Never reached the provider: the reconciler sends it again after the grace.
    assert (bad.status, bad.sending_at) == (Message.Status.SENDING, None)
    # Not tried: queued again at once, the claim not counted, with a task of its own.
    assert (last.status, last.attempts) == (Message.Status.QUEUED, 0)
    assert len(handed_back) == 1 and len(providers.messages()) == 1
    handed_back[0]()  # publishes the hand-back: the untried one only
    assert tasks_named(published, "send_messages") == [[[last.pk]]]

    # After the grace the reconciler queues it again: the lost claim is not an attempt.
    Message.objects.filter(pk=bad.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    scheduler.reconcile()
    bad.refresh_from_db()
    assert (bad.status, bad.attempts, bad.lost_claims) == (Message.Status.QUEUED, 0, 1)
    # One whose send task keeps dying before the provider call stops after MAX_LOST_CLAIMS.
    Message.objects.filter(pk=bad.pk).update(
        status=Message.Status.SENDING, lost_claims=MAX_LOST_CLAIMS - 1, updated_at=timezone.now() - timedelta(hours=1)
    )
    scheduler.reconcile()
    bad.refresh_from_db()
    assert bad.status == Message.Status.FAILED and "did not finish" in bad.error


def test_steps_lost_mid_run_come_back_one_per_task(db, published, django_capture_on_commit_callbacks):
    steps = steps_due_together(3, timezone.now() + timedelta(hours=1), key="welcome")
    long_ago = timezone.now() - timedelta(hours=1)
    Step.objects.update(status=Step.Status.RUNNING, started_at=long_ago, due_at=long_ago, attempts=1)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert scheduler.reconcile()["steps_reenqueued"] == 3
    finally:
        flush_broker()
    # The batch died once; if one of its steps is what kills it, it now dies alone.
    assert sorted(tasks_named(published, "run_steps")) == sorted([[s.pk]] for s in steps)


def test_a_batch_sees_a_revocation_once_its_consent_view_is_older_than_max_age(db):
    contact = make_contact()
    fresh, stale = ConsentView([contact], max_age=0), ConsentView([contact], max_age=3600)
    assert fresh.granted(contact, Channel.SMS) and stale.granted(contact, Channel.SMS)
    record_consent(contact, Channel.SMS, False, ConsentRecord.Source.RECIPIENT, detail="STOP")
    assert not fresh.granted(contact, Channel.SMS)
    assert stale.granted(contact, Channel.SMS)  # read a moment ago; re-read after max_age
    stale.suppressed(Channel.SMS, contact.phone)  # what the sender does on a provider's opt-out
    assert not stale.granted(contact, Channel.SMS)
    assert fresh.granted(contact, Channel.EMAIL)


def test_batches_cost_a_constant_number_of_queries(db, providers, django_assert_max_num_queries, settings, monkeypatch):
    settings.DRIP_SEND_BATCH_SECONDS = 600  # a slow CI must not split the batch or re-read consent
    monkeypatch.setattr("drip.delivery.sender.CONSENT_MAX_AGE", 600)
    for n in (10, 20):  # one email each (SQLite splits inserts past 999 parameters: stay under)
        steps = steps_due_together(n, timezone.now() + timedelta(hours=1), key="welcome")
        Step.objects.filter(pk__in=[s.pk for s in steps]).update(due_at=timezone.now(), status=Step.Status.ENQUEUED)
        # Claim, locked load, consent (records, suppressions), mark done, insert, and the
        # transaction's two statements.
        with django_assert_max_num_queries(8):
            run_steps([s.pk for s in steps])
    ids = list(Message.objects.values_list("id", flat=True))
    assert len(ids) == 30
    # Claim, load, consent (records, suppressions) for the batch; then what will be sent, and
    # the outcome, per message.
    with django_assert_max_num_queries(4 + 2 * 30):
        send_messages(ids)
    assert Counter(Message.objects.values_list("status", flat=True)) == {Message.Status.SENT: 30}


@pytest.mark.parametrize("change", ["event cancelled", "event rescheduled", "email consent revoked"])
def test_what_changes_during_a_send_batch_withdraws_its_untried_messages(worker, providers, settings, change):
    settings.DRIP_SEND_BATCH_SECONDS = 60
    settings.DRIP_EMAIL_BATCH_MAX = 1  # one request per message: the second waits while the first is at the provider
    settings.DRIP_RESCHEDULE_NOTICE_MINUTES = 24 * 60  # the 2 h move sends no "new time" email here
    providers.slow_down(0.3)
    event = make_event(starts_in=3600 * 48)
    registrations = [register_quietly(make_contact(), event) for _ in range(2)]
    now = timezone.now()  # due at one instant: one step task, so one email batch
    scheduler.schedule_steps([Step(
        registration=registration, funnel="pre_event", key="reminder_24h", anchor_at=event.starts_at,
        due_at=now, expires_at=event.starts_at,
    ) for registration in registrations])
    # A send batch holds one channel: the two emails go in one batch, the first at the
    # provider (0.3 s), the second claimed and waiting in the same batch.
    wait_until(lambda: Message.objects.filter(channel=Channel.EMAIL, status=Message.Status.SENDING, sending_at__isnull=False).exists())
    untried = Message.objects.get(channel=Channel.EMAIL, status=Message.Status.SENDING, sending_at=None)
    first = Message.objects.get(channel=Channel.EMAIL, sending_at__isnull=False)
    if change == "event cancelled":
        services.cancel_event(event)
    elif change == "event rescheduled":
        services.reschedule(event, event.starts_at + timedelta(hours=2))
    else:
        record_consent(untried.contact, Channel.EMAIL, False, ConsentRecord.Source.RECIPIENT, detail="unsubscribe")
    wait_until(lambda: not Message.objects.filter(status__in=[Message.Status.QUEUED, Message.Status.SENDING]).exists())
    time.sleep(0.5)
    untried.refresh_from_db()
    assert untried.status == Message.Status.SKIPPED and untried.error == {
        "event cancelled": "event cancelled",
        "event rescheduled": f"event rescheduled to {event.starts_at.isoformat()}: re-planned",
        "email consent revoked": "no email consent",
    }[change]
    assert providers.messages(kind="email", to=untried.to) == []
    assert len(providers.messages(kind="email", to=first.to)) == 1  # it was already at the provider
    # That step reached its contact (its email): not planned again for the new start.
    assert Step.objects.filter(registration=first.registration, key="reminder_24h").count() == 1


def test_a_rate_slot_lost_with_its_task_is_not_reused(db, settings):
    from drip.delivery.ratelimit import reserve_send_slot
    from drip.delivery.sender import _rate_limit_wait

    settings.DRIP_RATE_LIMITS = {"email": 1.0, "sms": 0.0}
    settings.DRIP_RATE_LIMIT_PREFIX = f"drip:test:{time.time()}"
    reserve_send_slot("email")  # the bucket's next free slot is now a second away
    held = Message(channel=Channel.EMAIL, rate_slot_at=timezone.now() + timedelta(seconds=0.3))
    assert 0.2 < _rate_limit_wait(held) <= 0.3  # its own slot, still ahead: waited for
    late = Message(channel=Channel.EMAIL, rate_slot_at=timezone.now() - timedelta(seconds=5))
    assert _rate_limit_wait(late) == 0  # a busy worker came late to its slot: still its own
    lost = Message(channel=Channel.EMAIL, rate_slot_at=timezone.now() - timedelta(minutes=3))
    assert _rate_limit_wait(lost) > 0.5  # recovered by the reconciler: a new slot, behind the others
