"""send_messages: the one sender for every channel, a batch of messages per task.

queued → sending (conditional claim, one per batch) → checks → render → record what will
be sent → provider call → sent | queued again (transient error, backoff) | failed | skipped.
Every attempt leaves its count and last error on the Message row.

Each message is prepared on its own (checks, render, rate slot); the guarded write that
records its call is made for the messages of one request together, right before it; the
provider call is one request per message, or one for several where the channel's
transport takes them together (Postmark's /email/batch; Twilio's requests side by side),
and then each message has its own outcome.
"""
from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from drip.delivery.channels import Transport, TransportError, transport_for
from drip.delivery.ratelimit import reserve_send_slot
from drip.delivery.rendering import Rendered, RenderError, numbers_reached_before, render_message, sms_number
from drip.delivery.sms import sms_segments
from drip.domain.consent import ConsentView, suppress
from drip.domain.policy import frequency_cap_reason, frequency_capped, message_block, message_expiry, quiet_hours_end
from drip.models import Channel, Contact, Message, MessageQuerySet, Suppression
from drip.support.logs import IdsAdapter, mask_address, message_log
from drip.support.rows import update_rows
from drip.timer.publish import enqueue_sends, enqueue_verifications

SMS_SEGMENTS_WARNING = 2  # past this, a message costs noticeably more: say so in the log
# A reserved rate slot this far in the past was lost (its task too, and the reconciler
# brought the message back): a fresh one keeps a recovered backlog from bursting past the
# limit. Shorter than the reconcile grace, longer than a busy worker's delay, so a message
# that is merely late does not lose its place again and again.
STALE_SLOT = timedelta(seconds=30)
# A revocation withdraws the contact's unsent messages itself (consent.record_consent); the
# batch's own view of consent is re-read this often as well.
CONSENT_MAX_AGE = 1.0
# Everything the checks and the templates read, in the batch's one load. A funnel message's
# step belongs to the message's own registration, which is joined once and shared.
MESSAGE_RELATED = ("contact", "registration__event", "step")
# A row still held by this task's claim (status sending, its token): each claim sets a new
# token, so a row the reconciler took over and handed to another task no longer matches.
CLAIMED = "status = %s AND claim_token = %s"


def send_batch(message_ids: list[int]) -> None:
    """Claim the batch (one conditional update), load it (one query) and read its consent
    (one query); then each message is checked and rendered on its own, and sent alone or with
    the others its provider takes in one request (their calls recorded together right before
    it), so every attempt still leaves its own trace and outcome."""
    now = timezone.now()
    token = uuid.uuid4().hex
    claimed = Message.objects.filter(id__in=message_ids).claim(token, now)
    if not claimed:
        return  # sent, skipped, in flight elsewhere, or not due yet: nothing to do
    batch = _load_batch(message_ids, token)
    consent = ConsentView((m.contact for m in batch), max_age=CONSENT_MAX_AGE)
    outbox = _Outbox(consent)
    numbers = [sms_number(m) for m in batch if m.channel == Channel.SMS]
    reached = numbers_reached_before(numbers) if numbers else set()
    # Messages wait their turn claimed but not yet sent; past the budget (a slow provider)
    # the rest goes back to the queue for another task instead of holding its claim.
    deadline = time.monotonic() + min(settings.DRIP_SEND_BATCH_SECONDS, settings.DRIP_RECONCILE_GRACE / 4)
    for index, message in enumerate(batch):
        if index and time.monotonic() > deadline:
            # A slow provider: the rest goes back in pieces of what one task got through in
            # the budget, so idle workers (the threads of a sender) share it.
            _hand_back(batch[index:], pieces_of=index)
            break
        try:
            _prepare(message, consent, outbox, reached)
        except Exception:
            # Not a provider error (those are classified): the database went away, or a bug.
            # The messages not yet tried go back to the queue, and those prepared go out
            # (recorded first; if the database is gone, they stay claimed with no call
            # recorded and the reconciler queues them again); this one is left to the
            # reconciler, which knows from sending_at whether it reached the provider.
            try:
                _hand_back(batch[index + 1 :])
                outbox.send()
            except Exception:  # the database is gone: the reconciler takes them back later
                message_log(message).exception("could not hand back the rest of the batch")
            raise
    outbox.send()


def _load_batch(message_ids: list[int], token: str) -> list[Message]:
    """The rows this task claimed, with everything the checks and the templates read, in one
    query; a funnel message's step shares the message's registration object."""
    batch = list(Message.objects.select_related(*MESSAGE_RELATED).filter(id__in=message_ids, claim_token=token))
    for message in batch:
        if message.step is not None and message.registration is not None and message.step.registration_id == message.registration_id:
            message.step.registration = message.registration
    return batch


@dataclass
class _Ready:
    """A message past its checks and rendered: its guarded write and the call are left."""

    message: Message
    rendered: Rendered
    log: IdsAdapter
    # What the guarded write records before the call (to, subject, body...).
    record: dict[str, Any]
    recorded: bool = False  # the guarded write is made: this message's call may go out


class _Outbox:
    """Prepared messages wait here for their guarded write (one statement for all that
    wait) and their provider call: each alone, or up to the transport's `batch_max` in one
    request. A send batch holds one channel (drip.timer.publish); should it hold two, a change of
    channel sends what waits first."""

    def __init__(self, consent: ConsentView) -> None:
        self.consent = consent
        self.waiting: list[_Ready] = []
        self.transport: Transport | None = None

    def add(self, ready: _Ready) -> None:
        if self.waiting and self.waiting[0].message.channel != ready.message.channel:
            self.send()
        if self.transport is None or not self.waiting:
            self.transport = transport_for(ready.message.channel)
        self.waiting.append(ready)
        if len(self.waiting) >= self.transport.batch_max:
            self.send()

    def send(self) -> None:
        waiting, self.waiting = self.waiting, []
        if waiting:
            self.deliver(waiting)

    def deliver(self, group: list[_Ready]) -> None:
        _deliver(group, transport_for(group[0].message.channel), self.consent)


def _prepare(message: Message, consent: ConsentView, outbox: _Outbox, numbers_reached: set[str]) -> None:
    """Checks, render and rate slot; then into the outbox, which records the call about to
    be made (the write that keeps a message from being sent twice) right before making it."""
    log = message_log(message)
    block = message_block(message, timezone.now(), consent)
    if block:
        _finish(message, block.status, error=block.reason)
        log.info("%s %s skipped: %s", message.template_type, message.channel, block.reason)
        return
    if _held_for_quiet_hours(message, log):
        return
    rendered = _render(message, log, numbers_reached)
    if rendered is None:
        return
    wait = _rate_limit_wait(message)
    if wait > settings.DRIP_RATE_LIMIT_MAX_SLEEP:
        _requeue(message, wait, error=None, count_attempt=False, rate_slot=True)
        log.debug("rate limit: %s slot in %.2fs; back to the queue until then", message.channel, wait)
        return
    if wait > 0:
        # What is ready goes out first: no message waits for another's slot, and none
        # reaches the provider before its own.
        outbox.send()
        time.sleep(wait)  # a short wait for a slot that is ours
    message.to = message.contact.address_for(message.channel)
    record = {"to": message.to, **_content_to_record(message, rendered), "rate_slot_at": None, **_sms_length(message, rendered, log)}
    ready = _Ready(message, rendered, log, record)
    if frequency_capped(message):
        # Its place under the cap is taken under the contact's row lock, now: it goes alone.
        outbox.send()
        if _record_capped(ready):
            outbox.deliver([ready])
        return
    outbox.add(ready)


def _content_to_record(message: Message, rendered: Rendered) -> dict[str, str]:
    """What will be sent, for the guarded write: nothing when the row already holds it (the
    step task rendered it ahead, and it is sent as it was rendered), since rewriting an
    email's HTML only costs the database a copy of it."""
    content = {"subject": rendered.subject, "body": rendered.text, "html": rendered.html}
    if all(getattr(message, name) == value for name, value in content.items()):
        return {}
    return content


def _render(message: Message, log: IdsAdapter, numbers_reached: set[str]) -> Rendered | None:
    """The message's templates; a template that cannot render fails the message once."""
    try:
        return render_message(message, numbers_reached)
    except RenderError as exc:
        _finish(message, Message.Status.FAILED, error=str(exc), error_class=Message.ErrorClass.RENDER)
        log.error("%s %s failed: %s", message.template_type, message.channel, exc)
    except Exception as exc:  # a bug must fail this message once, not loop via the reconciler
        _finish(message, Message.Status.FAILED, error=f"rendering crashed: {type(exc).__name__}: {exc}",
                error_class=Message.ErrorClass.RENDER)
        log.exception("%s %s failed: rendering crashed", message.template_type, message.channel)
    return None


def _deliver(group: list[_Ready], transport: Transport, consent: ConsentView) -> None:
    """The guarded write for the whole group, then the provider call (one request, or one
    each, as the transport does it) for those still due; then each message's own outcome."""
    due = [ready for ready in _record_calls(group) if not _expired(ready)]
    if not due:
        return
    outcomes = transport.send_many([(ready.message, ready.rendered) for ready in due])
    results = list(zip(due, outcomes, strict=True))
    # What was accepted is recorded first: it did go out, whatever happens next.
    _record_sent([(ready, outcome) for ready, outcome in results if not isinstance(outcome, TransportError)])
    for ready, outcome in results:
        if isinstance(outcome, TransportError):
            _on_transport_error(ready.message, outcome, consent, ready.log)


def _record_calls(group: list[_Ready]) -> list[_Ready]:
    """The write that keeps a message from being sent twice, right before its call: what
    will be sent and `sending_at`, for every message of the group in one statement, each only
    while it is still ours (this task's claim, no call recorded, not handed to verification).
    A message withdrawn meanwhile (a cancel, a reschedule, a revoked consent) or taken back
    by the reconciler (this task stalled past its grace) is not sent. Returns those to send."""
    pending = [ready for ready in group if not ready.recorded]
    if pending:
        now = timezone.now()
        # One statement per set of columns (a message rendered again records its content).
        alike: dict[tuple[str, ...], list[_Ready]] = defaultdict(list)
        for ready in pending:
            alike[tuple(ready.record)].append(ready)
        ours: set[int] = set()
        for same in alike.values():
            rows = [{"id": ready.message.id, **ready.record, "sending_at": now, "updated_at": now} for ready in same]
            ours |= update_rows(Message, rows, f"{CLAIMED} AND sending_at IS NULL AND verify_at IS NULL",
                                [Message.Status.SENDING, same[0].message.claim_token])
        for ready in pending:
            if ready.message.id in ours:
                _recorded(ready, now)
            else:
                ready.log.info("%s %s no longer ours (withdrawn, or taken back by the reconciler); not sending",
                               ready.message.template_type, ready.message.channel)
    return [ready for ready in group if ready.recorded]


def _recorded(ready: _Ready, now: datetime) -> None:
    for name, value in ready.record.items():
        setattr(ready.message, name, value)
    ready.message.sending_at = ready.message.updated_at = now
    ready.recorded = True


def _expired(ready: _Ready) -> bool:
    """Checked again right before the provider call: nothing goes out after expiry."""
    message = ready.message
    expires = message_expiry(message)
    if expires is None or timezone.now() < expires:
        return False
    _finish(message, Message.Status.SKIPPED, error=f"expired at {expires.isoformat()}")
    ready.log.info("%s %s skipped: expired before the provider call", message.template_type, message.channel)
    return True


def _record_sent(sent: list[tuple[_Ready, str]]) -> None:
    if not sent:
        return
    sent_at = timezone.now()
    if len(sent) == 1:
        [(ready, provider_id)] = sent
        recorded = {ready.message.id} if _finish(
            ready.message, Message.Status.SENT, provider_message_id=provider_id, sent_at=sent_at, error=""
        ) else set()
    else:
        recorded = _finish_sent_together(sent, sent_at)
    for ready, provider_id in sent:
        message = ready.message
        if message.id in recorded:
            ready.log.info("%s %s sent to %s at %s provider_id=%s", message.template_type, message.channel,
                           mask_address(message.to), sent_at.isoformat(), provider_id)
        else:
            # Only after DRIP_SENDING_TIMEOUT is a recorded call taken away (to be verified at
            # the provider, which will find it). Say so loudly, with the provider's id.
            ready.log.error("%s %s accepted by the provider (provider_id=%s) after it was handed to verification; do not send again",
                            message.template_type, message.channel, provider_id)


def _finish_sent_together(sent: list[tuple[_Ready, str]], sent_at: datetime) -> set[int]:
    """Every message of one request `sent`, each with its own provider id, in one UPDATE,
    each row still only while this task's claim holds (a send batch has one claim token).
    Returns the ids it recorded."""
    rows = [{"id": ready.message.id, "status": Message.Status.SENT, "provider_message_id": provider_id, "sent_at": sent_at,
             "error": "", "updated_at": sent_at} for ready, provider_id in sent]
    return update_rows(Message, rows, CLAIMED, [Message.Status.SENDING, sent[0][0].message.claim_token])


def _held_for_quiet_hours(message: Message, log: IdsAdapter) -> bool:
    """A marketing SMS inside the recipient's quiet hours waits for their end (a timed
    requeue: the row is the timer, no worker sleeps), or is skipped when waiting would pass
    its expiry. The wait and its end are on the Message (error, next_attempt_at)."""
    now = timezone.now()
    until = quiet_hours_end(message, now)
    if until is None:
        return False
    local = f"{until:%Y-%m-%d %H:%M} {message.recipient_zone()}"
    expires = message_expiry(message)
    if expires is not None and until >= expires:
        _finish(message, Message.Status.SKIPPED, error=f"quiet hours until {local}, past its expiry at {expires.isoformat()}")
        log.info("%s sms skipped: quiet hours would pass its expiry", message.template_type)
        return True
    _mine(message).hold_until(until, f"held for quiet hours until {local}", now)
    log.info("%s sms held for quiet hours until %s", message.template_type, local)
    return True


def _record_capped(ready: _Ready) -> bool:
    """The guarded write of a marketing message under a frequency cap: it takes its place
    under the contact's row lock, so two workers racing for the last place cannot both send.
    False when the cap is reached (skipped with the reason) or the message is no longer ours."""
    message = ready.message
    with transaction.atomic():
        list(Contact.objects.select_for_update().filter(pk=message.contact_id).values_list("pk", flat=True))
        reason = frequency_cap_reason(message, timezone.now())
        if reason:
            _finish(message, Message.Status.SKIPPED, error=reason)
            ready.log.info("%s %s skipped: %s", message.template_type, message.channel, reason)
            return False
        return bool(_record_calls([ready]))


def _hand_back(messages: list[Message], pieces_of: int | None = None) -> None:
    """Claimed messages this task will not get to: queued again, due now, the claim not
    counted as an attempt, and new tasks for them."""
    if not messages:
        return
    now = timezone.now()
    ids = [m.id for m in messages]
    pairs = [(m.id, m.channel) for m in messages]
    with transaction.atomic():
        Message.objects.filter(id__in=ids).hand_back(messages[0].claim_token, now)
        transaction.on_commit(lambda: enqueue_sends(pairs, batch_size=pieces_of))


def _rate_limit_wait(message: Message) -> float:
    now = timezone.now()
    # A slot reserved on an earlier pass is ours, unless it was lost (STALE_SLOT).
    if message.rate_slot_at is not None and message.rate_slot_at > now - STALE_SLOT:
        return max(0.0, (message.rate_slot_at - now).total_seconds())
    return reserve_send_slot(message.channel)


def _sms_length(message: Message, rendered: Rendered, log: IdsAdapter) -> dict[str, object]:
    if message.channel != Channel.SMS:
        return {}
    encoding, segments = sms_segments(rendered.text)
    if segments > SMS_SEGMENTS_WARNING:
        log.warning("%s sms is %d segments (%s): each is billed", message.template_type, segments, encoding)
    return {"sms_encoding": encoding, "sms_segments": segments}


def _mine(message: Message) -> MessageQuerySet:
    """The row as long as this task's claim holds: each claim sets a new token, so a claim
    taken over by the reconciler and another task no longer matches."""
    return Message.objects.filter(id=message.id, status=Message.Status.SENDING, claim_token=message.claim_token)


def _finish(message: Message, status: str, **fields: Any) -> bool:
    """A message's own outcome (a lone send, a skip, a failure) while this task's claim holds,
    as one plain UPDATE: the hot path skips the ORM's query building (bench/README.md)."""
    row = {"id": message.id, "status": status, **fields, "updated_at": timezone.now()}
    return bool(update_rows(Message, [row], CLAIMED, [Message.Status.SENDING, message.claim_token]))


def retry_delay(attempt: int) -> float:
    """Exponential backoff with jitter, in real seconds (never divided by DRIP_TIME_SCALE)."""
    base = min(settings.DRIP_RETRY_MAX_DELAY, settings.DRIP_RETRY_BASE_DELAY * 2 ** (attempt - 1))
    return base * random.uniform(0.5, 1.0)


def _on_transport_error(message: Message, exc: TransportError, consent: ConsentView, log: IdsAdapter) -> None:
    if exc.maybe_sent:
        _verify_later(message, exc, log)
        return
    attempts = message.attempts
    if exc.revoke_consent:
        # The provider's opt-out belongs to the address: every contact reached at it.
        address = message.to or message.contact.address_for(message.channel)
        suppress(
            message.channel, address, Suppression.Source.PROVIDER,
            detail="twilio:21610" if message.channel == Channel.SMS else "esp:rejected", reason=exc.message,
        )
        consent.suppressed(message.channel, address)
    if exc.permanent or attempts >= settings.DRIP_SEND_MAX_ATTEMPTS:
        why = "permanent" if exc.permanent else f"gave up after {attempts} attempts"
        error_class = Message.ErrorClass.PERMANENT if exc.permanent else Message.ErrorClass.GAVE_UP
        _finish(message, Message.Status.FAILED, error=f"{exc.message} ({why})", error_class=error_class)
        log.error("%s %s failed (%s): %s", message.template_type, message.channel, why, exc.message)
        return
    delay = retry_delay(attempts)
    _requeue(message, delay, error=exc.message, count_attempt=True)
    log.warning("%s %s attempt %d failed, retry in %.1fs: %s", message.template_type, message.channel, attempts, delay, exc.message)


def _verify_later(message: Message, exc: TransportError, log: IdsAdapter) -> None:
    """The request left and no answer came back: neither "sent" nor "send again" is safe, so
    the provider is asked (drip/delivery/verify.py) after DRIP_VERIFY_DELAY. The row is the timer: a
    lost verify task is published again by the reconciler."""
    now = timezone.now()
    at = now + timedelta(seconds=settings.DRIP_VERIFY_DELAY)
    with transaction.atomic():
        if _mine(message).verify_later(at, exc.message, now):
            transaction.on_commit(lambda: enqueue_verifications([(message.id, message.channel)], eta=at))
    log.warning("%s %s outcome unknown, verifying with the provider in %.0fs: %s", message.template_type, message.channel,
                settings.DRIP_VERIFY_DELAY, exc.message)


def _requeue(message: Message, delay: float, error: str | None, count_attempt: bool, rate_slot: bool = False) -> None:
    """Back to queued, to be sent again in `delay` real seconds, with an ETA task (a short
    wait: a long one is `hold_until`). A rate-limit deferral is not an attempt and keeps its
    reserved slot; a provider error is, and records its error."""
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
            transaction.on_commit(lambda: enqueue_sends([(message.id, message.channel)], eta=at))
