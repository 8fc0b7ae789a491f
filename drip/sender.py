"""send_message: the one sender for every channel.

queued → sending (conditional claim) → checks → render → record what will be sent →
provider call → sent | queued again (transient error, backoff) | failed | skipped.
Every attempt leaves its count and last error on the Message row.
"""
from __future__ import annotations

import random
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from .channels import TransportError, transport_for
from .consent import record_consent
from .logs import IdsAdapter, message_log
from .models import Channel, ConsentRecord, Message
from .policy import message_block, message_expiry
from .ratelimit import reserve_send_slot
from .rendering import Rendered, RenderError, render_message
from .sms import sms_segments

SMS_SEGMENTS_WARNING = 2  # past this, a message costs noticeably more: say so in the log

# A duplicate of an earlier attempt's task must not jump a retry's backoff.
EARLY_TOLERANCE = timedelta(seconds=1)


def send_message(message_id: int) -> None:
    now = timezone.now()
    claimed = Message.objects.filter(
        id=message_id, status=Message.Status.QUEUED, next_attempt_at__lte=now + EARLY_TOLERANCE
    ).update(status=Message.Status.SENDING, sending_at=None, attempts=F("attempts") + 1, updated_at=now)
    if not claimed:
        return  # sent, skipped, in flight elsewhere, or not due yet: nothing to do
    # One query for everything the checks and the templates read.
    message = Message.objects.select_related(
        "contact", "registration__event", "step__registration__event", "step__registration__contact"
    ).get(id=message_id)
    log = message_log(message)
    block = message_block(message, now)
    if block:
        _finish(message, block.status, error=block.reason)
        log.info("%s %s skipped: %s", message.template_type, message.channel, block.reason)
        return
    try:
        rendered = render_message(message)
    except RenderError as exc:
        _finish(message, Message.Status.FAILED, error=str(exc))
        log.error("%s %s failed: %s", message.template_type, message.channel, exc)
        return
    except Exception as exc:  # a bug must fail this message once, not loop via the reconciler
        _finish(message, Message.Status.FAILED, error=f"rendering crashed: {type(exc).__name__}: {exc}")
        log.exception("%s %s failed: rendering crashed", message.template_type, message.channel)
        return
    wait = _rate_limit_wait(message)
    if wait > settings.DRIP_RATE_LIMIT_MAX_SLEEP:
        _requeue(message, wait, error=None, count_attempt=False, rate_slot=True)
        log.debug("rate limit: %s slot in %.2fs; back to the queue until then", message.channel, wait)
        return
    time.sleep(wait)  # a short wait for a slot that is ours
    message.to = message.contact.address_for(message.channel)
    recorded = _mine(message).filter(sending_at__isnull=True).update(
        to=message.to, subject=rendered.subject, body=rendered.text, html=rendered.html,
        sending_at=timezone.now(), rate_slot_at=None, **_sms_length(message, rendered, log),
    )
    if not recorded:
        # We stalled long enough for the reconciler to take the message back and hand it
        # to another task: that one sends it, this one must not.
        log.warning("%s %s taken back by the reconciler; not sending", message.template_type, message.channel)
        return
    # Checked again right before the provider call: nothing goes out after expiry.
    expires = message_expiry(message)
    if expires is not None and timezone.now() >= expires:
        _finish(message, Message.Status.SKIPPED, error=f"expired at {expires.isoformat()}")
        log.info("%s %s skipped: expired before the provider call", message.template_type, message.channel)
        return
    try:
        provider_id = transport_for(message.channel).send(message, rendered)
    except TransportError as exc:
        _on_transport_error(message, exc, log)
        return
    sent_at = timezone.now()
    _finish(message, Message.Status.SENT, provider_message_id=provider_id, sent_at=sent_at, error="")
    log.info("%s %s sent to %s at %s provider_id=%s", message.template_type, message.channel, message.to, sent_at.isoformat(), provider_id)


def _rate_limit_wait(message: Message) -> float:
    if message.rate_slot_at is not None:  # reserved on an earlier pass: it is ours now
        return max(0.0, (message.rate_slot_at - timezone.now()).total_seconds())
    return reserve_send_slot(message.channel)


def _sms_length(message: Message, rendered: Rendered, log: IdsAdapter) -> dict[str, object]:
    if message.channel != Channel.SMS:
        return {}
    encoding, segments = sms_segments(rendered.text)
    if segments > SMS_SEGMENTS_WARNING:
        log.warning("%s sms is %d segments (%s): each is billed", message.template_type, segments, encoding)
    return {"sms_encoding": encoding, "sms_segments": segments}


def _mine(message: Message) -> QuerySet[Message]:
    """The row as long as this task's claim holds: each claim bumps `attempts`, so a claim
    taken over by the reconciler and another task no longer matches."""
    return Message.objects.filter(id=message.id, status=Message.Status.SENDING, attempts=message.attempts)


def _finish(message: Message, status: str, **fields: object) -> bool:
    return bool(_mine(message).update(status=status, updated_at=timezone.now(), **fields))


def retry_delay(attempt: int) -> float:
    """Exponential backoff with jitter, in real seconds (never divided by DRIP_TIME_SCALE)."""
    base = min(settings.DRIP_RETRY_MAX_DELAY, settings.DRIP_RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return base * random.uniform(0.5, 1.0)


def _on_transport_error(message: Message, exc: TransportError, log: IdsAdapter) -> None:
    attempts = message.attempts
    if exc.revoke_consent:
        record_consent(
            message.contact, message.channel, False, ConsentRecord.Source.PROVIDER,
            detail="twilio:21610" if message.channel == Channel.SMS else "esp:rejected", reason=exc.message,
        )
    if exc.permanent or attempts >= settings.DRIP_SEND_MAX_ATTEMPTS:
        why = "permanent" if exc.permanent else f"gave up after {attempts} attempts"
        _finish(message, Message.Status.FAILED, error=f"{exc.message} ({why})")
        log.error("%s %s failed (%s): %s", message.template_type, message.channel, why, exc.message)
        return
    delay = retry_delay(attempts)
    _requeue(message, delay, error=exc.message, count_attempt=True)
    log.warning("%s %s attempt %d failed, retry in %.1fs: %s", message.template_type, message.channel, attempts, delay, exc.message)


def _requeue(message: Message, delay: float, error: str | None, count_attempt: bool, rate_slot: bool = False) -> None:
    """Back to queued, to be sent again in `delay` real seconds. A rate-limit deferral is
    not an attempt and keeps its reserved slot; a provider error is, and records its error."""
    from .tasks import send_message as send_task

    at = timezone.now() + timedelta(seconds=delay)
    fields: dict[str, object] = {
        "status": Message.Status.QUEUED, "sending_at": None, "updated_at": timezone.now(),
        "next_attempt_at": at, "rate_slot_at": at if rate_slot else None,
    }
    if error is not None:
        fields["error"] = error
    if not count_attempt:
        fields["attempts"] = F("attempts") - 1
    with transaction.atomic():
        # The row is the timer here too: if this countdown task is lost, the reconciler
        # re-enqueues the message once next_attempt_at has passed.
        if _mine(message).update(**fields):
            transaction.on_commit(lambda: send_task.apply_async((message.id,), eta=at))
