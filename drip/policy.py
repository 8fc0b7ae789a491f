"""The one place that decides "may this be sent now": registration, event state and time
(through the funnel's own rules), expiry, address and consent. Called by the step task
before it creates messages and by send_message right before the provider call."""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from .consent import has_consent
from .models import Contact, Message, Registration, Step


class Block(NamedTuple):
    status: str  # the status the blocked row ends in
    reason: str


def step_block(step: Step, now: datetime) -> Block | None:
    from campaigns.funnels import funnel_step

    funnel, _ = funnel_step(step)
    registration: Registration = step.registration
    reason = funnel.blocking_reason(step, registration, registration.event)
    if reason:
        cancelled = reason in ("registration cancelled", "event cancelled")
        return Block(Step.Status.CANCELLED if cancelled else Step.Status.SKIPPED, reason)
    if step.expires_at is not None and now >= step.expires_at:
        return Block(Step.Status.SKIPPED, f"expired at {step.expires_at.isoformat()} (event start)")
    return None


def channel_block_reason(contact: Contact, channel: str) -> str:
    if not contact.address_for(channel):
        return f"contact has no {'email address' if channel == 'email' else 'phone number'}"
    if not has_consent(contact, channel):
        return f"no {channel} consent"
    return ""


def message_block(message: Message, now: datetime) -> Block | None:
    if message.step_id is not None:
        block = step_block(message.step, now)
        if block:
            return Block(Message.Status.SKIPPED, block.reason)
    if message.expires_at is not None and now >= message.expires_at:
        return Block(Message.Status.SKIPPED, f"expired at {message.expires_at.isoformat()}")
    reason = channel_block_reason(message.contact, message.channel)
    if reason:
        return Block(Message.Status.SKIPPED, reason)
    return None
