"""verify_messages: settle a send whose outcome is unknown by asking the provider.

A provider call that timed out after the request left, or that a dying worker never
finished, leaves the message `sending` with `sending_at` set: the provider may or may not
have it. Sending again could deliver it twice; failing it could lose it. So it is
*verifying* (`verify_at` set) and a lookup task asks the provider (channels' `lookup`):

- accepted → `sent`, with the provider's id;
- not found, once DRIP_VERIFY_NOT_FOUND_AFTER has passed since the call (a search index
  lags) → `queued` again and sent through the normal path (the lost call was an attempt);
  not found earlier → asked again at that time;
- cannot tell for now (the lookup failed on the network) → asked again, with backoff, up to
  DRIP_VERIFY_MAX_ATTEMPTS lookups;
- cannot tell (no lookup for this provider) → `failed` "outcome unknown", as before.

The lookups are network calls: no transaction or lock is held across them. The task claims
each row right before its lookup, with a fresh token (a conditional update) and a lease of
two provider timeouts, and every outcome is written only while that token holds, so two
tasks (or two reconcilers publishing one) settle a message once. One row at a time, so a
killed task holds one row for one lease, never a whole batch for the sum of its lookups.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from drip.delivery.channels import Lookup, transport_for
from drip.models import Message, MessageQuerySet
from drip.support.logs import message_log
from drip.timer.publish import enqueue_sends, enqueue_verifications


def verify_batch(message_ids: list[int]) -> None:
    for message_id in message_ids:
        message = _claim(message_id)
        if message is not None:
            settle(message, transport_for(message.channel).lookup(message))


def _claim(message_id: int) -> Message | None:
    """The row, held by this task for one lookup (at most DRIP_PROVIDER_TIMEOUT; the lease is
    twice that); past it, plus the reconcile grace, a task that died with it is published
    again. None when it is settled, not due yet, or held by another verify task."""
    now = timezone.now()
    token = uuid.uuid4().hex
    lease = now + timedelta(seconds=2 * settings.DRIP_PROVIDER_TIMEOUT)
    if not Message.objects.filter(id=message_id).claim_verify(token, lease, now):
        return None
    return Message.objects.filter(id=message_id, claim_token=token).first()


def settle(message: Message, lookup: Lookup) -> None:
    """Write what the lookup says, while this task's claim holds."""
    now = timezone.now()
    mine = Message.objects.filter(id=message.id, claim_token=message.claim_token)
    why = message.error or "outcome unknown"
    log = message_log(message)
    if lookup.outcome == Lookup.ACCEPTED:
        if mine.verified_sent(lookup.provider_id, now):
            log.info("%s %s found at the provider (provider_id=%s) after %s: sent", message.template_type, message.channel,
                     lookup.provider_id, why)
        return
    if lookup.outcome == Lookup.NOT_FOUND:
        _not_found(message, mine, why, now)
        return
    if lookup.retry and message.verify_attempts < settings.DRIP_VERIFY_MAX_ATTEMPTS:
        _ask_again(message, mine, _lookup_backoff(message.verify_attempts), now)
        log.warning("%s %s cannot tell yet (%s); asking again", message.template_type, message.channel, lookup.reason)
        return
    if mine.verify_failed(f"{why}: outcome unknown ({lookup.reason}), not resent to avoid a duplicate",
                          Message.ErrorClass.OUTCOME_UNKNOWN, now):
        log.error("%s %s outcome unknown after %s: %s", message.template_type, message.channel, why, lookup.reason)


def _not_found(message: Message, mine: MessageQuerySet, why: str, now: datetime) -> None:
    assert message.sending_at is not None
    believed_at = message.sending_at + timedelta(seconds=settings.DRIP_VERIFY_NOT_FOUND_AFTER)
    log = message_log(message)
    if now < believed_at:
        # The provider's search may not show it yet: absence counts only after the lag.
        _ask_again(message, mine, (believed_at - now).total_seconds(), now)
        return
    if message.attempts >= settings.DRIP_SEND_MAX_ATTEMPTS:
        error = f"{why}: not found at the provider (gave up after {message.attempts} attempts)"
        if mine.verify_failed(error, Message.ErrorClass.GAVE_UP, now):
            log.error("%s %s failed: %s", message.template_type, message.channel, error)
        return
    with transaction.atomic():
        if mine.verified_not_sent(f"{why}: not found at the provider; sending again", now):
            transaction.on_commit(lambda: enqueue_sends([(message.id, message.channel)]))
            log.warning("%s %s not found at the provider after %s: sending again", message.template_type, message.channel, why)


def _ask_again(message: Message, mine: MessageQuerySet, delay: float, now: datetime) -> None:
    at = now + timedelta(seconds=delay)
    with transaction.atomic():
        if mine.verify_again(at, now):
            transaction.on_commit(lambda: enqueue_verifications([(message.id, message.channel)], eta=at))


def _lookup_backoff(attempt: int) -> float:
    """A failing lookup is asked again later and later (real seconds), never sooner than 1 s."""
    return min(settings.DRIP_RETRY_MAX_DELAY, max(1.0, settings.DRIP_VERIFY_DELAY) * 2 ** max(0, attempt - 1))
