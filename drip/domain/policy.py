"""The one place that decides "may this be sent now": registration, event state and time
(through the funnel's own rules), expiry, address and consent. Called by the step task
before it creates messages and by the sender right before the provider call."""
from __future__ import annotations

from datetime import datetime

from django.conf import settings

from drip.domain.consent import ConsentView, has_consent, no_consent_reason
from drip.domain.funnels import Block, funnel, funnel_step
from drip.models import Channel, Contact, Event, Message, Purpose, Registration, Step


def step_expiry(step: Step) -> datetime | None:
    """Pre-event steps expire at the event's start as it is *now*, not as it was when they
    were planned: an event moved earlier must not get a late "starts in 1 hour"."""
    try:
        definition = funnel(step.funnel)
    except KeyError:
        return step.expires_at
    if definition.expires_at_anchor:
        return definition.anchor_of(step.registration.event)
    return step.expires_at


def step_block(step: Step, now: datetime) -> Block | None:
    try:
        found, _ = funnel_step(step)
    except KeyError:
        return Block(Step.Status.SKIPPED, f"funnel step {step.funnel}/{step.key} is no longer defined")
    registration: Registration = step.registration
    block = found.block(step, registration, registration.event)
    if block:
        return block
    expires = step_expiry(step)
    if expires is not None and now >= expires:
        return Block(Step.Status.SKIPPED, f"expired at {expires.isoformat()} (event start)")
    return None


def message_expiry(message: Message) -> datetime | None:
    return step_expiry(message.step) if message.step is not None else message.expires_at


def channel_block_reason(contact: Contact, channel: str, consent: ConsentView | None = None) -> str:
    """`consent` is a batch's view of its contacts' consent; without one, it is read here."""
    if not contact.address_for(channel):
        return f"contact has no {'email address' if channel == 'email' else 'phone number'}"
    granted = consent.granted(contact, channel) if consent is not None else has_consent(contact, channel)
    if not granted:
        return no_consent_reason(channel)
    return ""


def message_block(message: Message, now: datetime, consent: ConsentView | None = None) -> Block | None:
    registration = message.registration
    if message.step is not None:
        block = step_block(message.step, now)
        if block:
            return Block(Message.Status.SKIPPED, block.reason)
    elif registration is not None:
        # A direct send about a registration follows the registration's fate too.
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


def quiet_hours_end(message: Message, now: datetime) -> datetime | None:
    """When a marketing SMS that falls inside quiet hours (the recipient's local time) may
    go, or None when it may go now. Transactional messages and email are never held."""
    window = settings.DRIP_SMS_QUIET_HOURS
    if window is None or message.channel != Channel.SMS or message.purpose != Purpose.MARKETING:
        return None
    return window.ends_after(now, message.recipient_zone())


# A marketing message counts against the cap once its provider call is recorded.
REACHED = (Message.Status.SENDING, Message.Status.SENT, Message.Status.DELIVERED, Message.Status.BOUNCED)


def frequency_capped(message: Message) -> bool:
    return settings.DRIP_FREQUENCY_CAP is not None and message.purpose == Purpose.MARKETING


def frequency_cap_reason(message: Message, now: datetime) -> str:
    """Why this marketing message would exceed DRIP_FREQUENCY_CAP, or "". The caller holds
    the contact's row lock, so two workers cannot both take the last place."""
    cap = settings.DRIP_FREQUENCY_CAP
    if cap is None or message.purpose != Purpose.MARKETING:
        return ""
    since: datetime = now - cap.window
    recent = (
        Message.objects.filter(
            contact_id=message.contact_id, channel=message.channel, purpose=Purpose.MARKETING,
            status__in=REACHED, sending_at__gte=since,
        )
        .exclude(pk=message.pk)
        .count()
    )
    if recent < cap.limit:
        return ""
    return f"frequency cap: {cap.describe()} marketing {message.channel} messages already sent to this contact"

