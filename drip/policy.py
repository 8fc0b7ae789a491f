"""The one place that decides "may this be sent now": registration, event state and time
(through the funnel's own rules), expiry, address and consent. Called by the step task
before it creates messages and by the sender right before the provider call."""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from .consent import ConsentView, has_consent, no_consent_reason
from .models import Contact, Event, Message, Registration, Step


class Block(NamedTuple):
    status: str  # the status the blocked row ends in
    reason: str


CANCELLED_REASONS = ("registration cancelled", "event cancelled")


def step_expiry(step: Step) -> datetime | None:
    """Pre-event steps expire at the event's start as it is *now*, not as it was when they
    were planned: an event moved earlier must not get a late "starts in 1 hour"."""
    from campaigns.funnels import FUNNELS

    funnel = FUNNELS.get(step.funnel)
    if funnel is not None and funnel.expires_at_anchor:
        return funnel.anchor(step.registration.event)
    return step.expires_at


def step_block(step: Step, now: datetime) -> Block | None:
    from campaigns.funnels import funnel_step

    try:
        funnel, _ = funnel_step(step)
    except KeyError:
        return Block(Step.Status.SKIPPED, f"funnel step {step.funnel}/{step.key} is no longer defined")
    registration: Registration = step.registration
    reason = funnel.blocking_reason(step, registration, registration.event)
    if reason:
        return Block(Step.Status.CANCELLED if reason in CANCELLED_REASONS else Step.Status.SKIPPED, reason)
    expires = step_expiry(step)
    if expires is not None and now >= expires:
        return Block(Step.Status.SKIPPED, f"expired at {expires.isoformat()} (event start)")
    return None


def message_expiry(message: Message) -> datetime | None:
    return step_expiry(message.step) if message.step_id is not None else message.expires_at


def channel_block_reason(contact: Contact, channel: str, consent: ConsentView | None = None) -> str:
    """`consent` is a batch's view of its contacts' consent; without one, it is read here."""
    if not contact.address_for(channel):
        return f"contact has no {'email address' if channel == 'email' else 'phone number'}"
    granted = consent.granted(contact.pk, channel) if consent is not None else has_consent(contact, channel)
    if not granted:
        return no_consent_reason(channel)
    return ""


def message_block(message: Message, now: datetime, consent: ConsentView | None = None) -> Block | None:
    if message.step_id is not None:
        block = step_block(message.step, now)
        if block:
            return Block(Message.Status.SKIPPED, block.reason)
    elif message.registration_id is not None:
        # A direct send about a registration follows the registration's fate too.
        registration = message.registration
        if registration.status != Registration.Status.ACTIVE:
            return Block(Message.Status.SKIPPED, "registration cancelled")
        if registration.event.status == Event.Status.CANCELLED:
            return Block(Message.Status.SKIPPED, "event cancelled")
    expires = message_expiry(message)
    if expires is not None and now >= expires:
        return Block(Message.Status.SKIPPED, f"expired at {expires.isoformat()}")
    reason = channel_block_reason(message.contact, message.channel, consent)
    if reason:
        return Block(Message.Status.SKIPPED, reason)
    return None
