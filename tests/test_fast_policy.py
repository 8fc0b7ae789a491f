"""drip.policy rule by rule, in-process: states set up through drip.engine.services (the doors'
own actions) and the Step / Message rows the planner and the step runner create. No
worker: tasks published on commit never leave the test's transaction."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from campaigns.funnels import POST_EVENT
from drip.domain.consent import ConsentView
from drip.domain.funnels import Block
from drip.domain.policy import channel_block_reason, message_block, message_expiry, step_block, step_expiry
from drip.engine import services
from drip.engine.direct import send_direct
from drip.engine.planning import build_step
from drip.engine.steps import run_step_batch
from drip.models import Channel, Event, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event, register_quietly


def planned(registration: Registration, key: str, version: int = 1) -> Step:
    """The step as a step task loads it (its registration and event read now)."""
    return Step.objects.select_related("registration__event").get(registration=registration, key=key, plan_version=version)


def loaded(message: Message) -> Message:
    """The message as the sender loads it."""
    return Message.objects.select_related("contact", "registration__event", "step__registration__event").get(pk=message.pk)


def enrolled(starts_in: float = 3600 * 48) -> Registration:
    return enroll(make_contact(), make_event(starts_in=starts_in))


def completed(attended: bool) -> Registration:
    registration = enrolled()
    # Completed early (forced): the pre-event steps exist, and are what the rules act on.
    services.complete_event(registration.event, {registration.pk} if attended else set(), force=True)
    registration.refresh_from_db()
    return registration


def direct(channel: str = Channel.EMAIL, template: str = "reminder_24h", **contact_fields: Any) -> Message:
    contact = make_contact(**contact_fields)
    registration = register_quietly(contact, make_event())
    message, _ = send_direct(contact, channel, template, registration=registration, step_type="manual")
    return message


# Step rules (drip.domain.funnels.Funnel.block, drip.domain.policy.step_block)


def test_a_cancelled_registration_cancels_its_steps(db):
    registration = enrolled()
    services.cancel_registration(registration)
    step = planned(registration, "reminder_24h")
    assert step_block(step, timezone.now()) == Block(Step.Status.CANCELLED, "registration cancelled")
    assert (step.status, step.reason) == (Step.Status.CANCELLED, "registration cancelled")  # what the door wrote


def test_a_cancelled_event_cancels_its_steps(db):
    registration = enrolled()
    services.cancel_event(registration.event)
    step = planned(registration, "reminder_1h")
    assert step_block(step, timezone.now()) == Block(Step.Status.CANCELLED, "event cancelled")


def test_a_pre_event_step_of_a_completed_event_is_skipped(db):
    registration = enrolled()
    services.complete_event(registration.event, force=True)
    step = planned(registration, "reminder_24h")
    assert step_block(step, timezone.now()) == Block(Step.Status.SKIPPED, "event is completed, not scheduled")


def test_a_reminder_planned_for_an_old_start_is_skipped_and_its_new_plan_runs(db):
    registration = enrolled()
    event = registration.event
    old_start, new_start = event.starts_at, event.starts_at + timedelta(days=1)
    services.reschedule(event, new_start)
    old = planned(registration, "reminder_24h", version=1)
    block = step_block(old, timezone.now())
    assert block is not None and block.status == Step.Status.SKIPPED
    assert block.reason == f"planned for an old event start ({old_start.isoformat()}); the event now starts {new_start.isoformat()}"
    new = planned(registration, "reminder_24h", version=2)
    assert new.anchor_at == new_start and step_block(new, new.due_at) is None


def test_the_welcome_is_not_tied_to_the_start(db):
    registration = enrolled()
    welcome = planned(registration, "welcome")
    run_step_batch([welcome.pk])  # it ran (its message is queued) before the event moved
    services.reschedule(registration.event, registration.event.starts_at + timedelta(days=1))
    welcome = planned(registration, "welcome")
    assert welcome.status == Step.Status.DONE and welcome.anchor_at != welcome.registration.event.starts_at
    assert step_block(welcome, timezone.now()) is None
    [message] = Message.objects.filter(step=welcome)
    assert message.status == Message.Status.QUEUED and message_block(loaded(message), timezone.now()) is None


def test_a_post_event_step_needs_a_completed_event(db):
    registration = enrolled()
    now = timezone.now()
    step = build_step(POST_EVENT, POST_EVENT.step("thank_you"), registration.pk, now, now)
    step.registration = registration
    assert step_block(step, now) == Block(Step.Status.SKIPPED, "event is scheduled, not completed")


def test_a_post_event_step_planned_for_an_old_completion_time_is_skipped(db):
    registration = completed(attended=True)
    thank_you = planned(registration, "thank_you")
    assert step_block(thank_you, thank_you.due_at) is None
    # No door moves a completion today (the admin shows completed_at read-only): the rule
    # guards the day one does.
    Event.objects.filter(pk=registration.event_id).update(completed_at=thank_you.anchor_at - timedelta(hours=2))
    thank_you = planned(registration, "thank_you")
    assert step_block(thank_you, thank_you.due_at) == Block(Step.Status.SKIPPED, "planned for an old completion time")


def test_a_change_of_attendance_skips_the_other_branch(db):
    registration = completed(attended=True)
    services.set_attendance(registration, False)
    thank_you = planned(registration, "thank_you")
    assert step_block(thank_you, thank_you.due_at) == Block(
        Step.Status.SKIPPED, "attendance changed: registration is now on the no_show branch"
    )
    sorry = Step.objects.select_related("registration__event").get(registration=registration, key="sorry_missed")
    assert step_block(sorry, sorry.due_at) is None


def test_unknown_attendance_counts_as_a_no_show(db):
    registration = completed(attended=False)
    assert registration.attended is None
    sorry = planned(registration, "sorry_missed")
    assert step_block(sorry, sorry.due_at) is None
    assert not Step.objects.filter(registration=registration, key="thank_you").exists()


def test_a_step_of_a_funnel_or_key_no_longer_defined_is_skipped(db):
    registration = enrolled()
    event = registration.event
    gone_funnel = Step(registration=registration, funnel="upsell", key="offer", anchor_at=event.starts_at, due_at=event.starts_at)
    gone_key = Step(registration=registration, funnel="pre_event", key="reminder_2h", anchor_at=event.starts_at, due_at=event.starts_at)
    now = timezone.now()
    assert step_block(gone_funnel, now) == Block(Step.Status.SKIPPED, "funnel step upsell/offer is no longer defined")
    assert step_block(gone_key, now) == Block(Step.Status.SKIPPED, "funnel step pre_event/reminder_2h is no longer defined")
    assert step_expiry(gone_funnel) is None  # its own expires_at: nothing to read it from


def test_a_pre_event_step_expires_at_the_start_as_it_is_now(db):
    registration = enrolled(starts_in=3600 * 48)
    welcome = planned(registration, "welcome")
    run_step_batch([welcome.pk])
    [message] = Message.objects.filter(step=welcome)
    old_start = registration.event.starts_at
    # Moved earlier: the welcome's message (not tied to the start) is still to go out.
    new_start = timezone.now() + timedelta(hours=1)
    services.reschedule(registration.event, new_start)
    message = loaded(message)
    assert message.status == Message.Status.QUEUED
    assert message.expires_at == old_start  # what it was planned with, and not what counts
    assert step_expiry(message.step) == new_start and message_expiry(message) == new_start
    assert step_block(message.step, new_start - timedelta(seconds=1)) is None
    assert step_block(message.step, new_start) == Block(Step.Status.SKIPPED, f"expired at {new_start.isoformat()} (event start)")
    assert message_block(message, new_start) == Block(Message.Status.SKIPPED, f"expired at {new_start.isoformat()} (event start)")


def test_a_post_event_step_never_expires(db):
    registration = completed(attended=True)
    nurture = planned(registration, "nurture")
    assert step_expiry(nurture) is None
    assert step_block(nurture, nurture.due_at + timedelta(days=365)) is None


# Message rules (drip.domain.policy.message_block)


def test_a_funnel_message_follows_its_step_and_is_skipped_not_cancelled(db):
    registration = enrolled()
    welcome = planned(registration, "welcome")
    run_step_batch([welcome.pk])
    services.cancel_registration(registration)
    [message] = Message.objects.filter(step=welcome)
    assert message_block(loaded(message), timezone.now()) == Block(Message.Status.SKIPPED, "registration cancelled")


def test_a_direct_send_about_a_cancelled_registration_is_skipped(db):
    message = direct()
    services.cancel_registration(message.registration)
    message = loaded(message)
    assert (message.status, message.error) == (Message.Status.SKIPPED, "registration cancelled")  # withdrawn by the door
    assert message_block(message, timezone.now()) == Block(Message.Status.SKIPPED, "registration cancelled")


def test_a_direct_send_about_a_cancelled_event_is_skipped(db):
    message = direct(Channel.SMS)
    services.cancel_event(message.registration.event)
    message = loaded(message)
    assert (message.status, message.error) == (Message.Status.SKIPPED, "event cancelled")
    assert message_block(message, timezone.now()) == Block(Message.Status.SKIPPED, "event cancelled")


def test_a_direct_send_without_a_registration_has_no_registration_rule(db):
    contact = make_contact()
    message, _ = send_direct(contact, Channel.EMAIL, "welcome")
    assert message_block(loaded(message), timezone.now()) is None  # (rendering fails it later: no event)


def test_an_expired_direct_message_is_skipped(db):
    message = direct()
    # send_direct plans no expiry today; the rule reads the row's own expires_at.
    expires = timezone.now() + timedelta(minutes=5)
    Message.objects.filter(pk=message.pk).update(expires_at=expires)
    message = loaded(message)
    assert message_expiry(message) == expires
    assert message_block(message, expires - timedelta(seconds=1)) is None
    assert message_block(message, expires) == Block(Message.Status.SKIPPED, f"expired at {expires.isoformat()}")


def test_a_contact_without_an_address_is_skipped_with_the_reason(db):
    no_email = direct(Channel.EMAIL, email="")
    no_phone = direct(Channel.SMS, phone="")
    now = timezone.now()
    assert message_block(loaded(no_email), now) == Block(Message.Status.SKIPPED, "contact has no email address")
    assert message_block(loaded(no_phone), now) == Block(Message.Status.SKIPPED, "contact has no phone number")


def test_a_contact_without_consent_is_skipped_with_the_reason(db):
    message = loaded(direct(Channel.SMS, sms_consent=False))
    now = timezone.now()
    assert message_block(message, now) == Block(Message.Status.SKIPPED, "no sms consent")
    view = ConsentView([message.contact])
    assert message_block(message, now, view) == Block(Message.Status.SKIPPED, "no sms consent")
    assert channel_block_reason(message.contact, Channel.EMAIL, view) == ""  # consent is per channel


def test_a_contact_with_consent_may_be_sent_to(db):
    message = loaded(direct(Channel.EMAIL))
    now = timezone.now()
    assert message_block(message, now) is None
    assert message_block(message, now, ConsentView([message.contact])) is None
    assert channel_block_reason(message.contact, Channel.SMS) == ""
