"""The step task's work: claim a batch of Steps, re-validate each, create their Messages and
hand them to the sender. A step's outcome commits together with its status "done"."""
from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from drip.delivery.rendering import render_ahead
from drip.domain.consent import ConsentView
from drip.domain.funnels import Block, funnel_step
from drip.domain.policy import channel_block_reason, step_block
from drip.models import EARLY_TOLERANCE, Message, Step
from drip.support.logs import step_log
from drip.support.rows import insert_rows
from drip.timer.publish import enqueue_sends, enqueue_steps

STEP_RELATED = ("registration__event", "registration__contact")


def run_step_batch(step_ids: list[int]) -> None:
    """The work of the step task: claim, check, plan the messages, hand them on. It runs
    DRIP_STEP_LEAD before the steps are due (publish.enqueue_steps), and the messages leave
    with the due time as their ETA: at the due instant only the send remains."""
    now = timezone.now()
    token = uuid.uuid4().hex
    # Not yet due: a stray early delivery leaves the step to its own ETA task (or, if that
    # was lost, to the reconciler) instead of stealing the claim.
    claimed = Step.objects.filter(id__in=step_ids).start_run(token, now, ready_until(now))
    if claimed:
        _run_claimed(step_ids, token, now)
    if claimed < len(step_ids):
        _rearm_early(step_ids, now)  # the rest: already run, cancelled, re-planned, or early


def ready_until(now: datetime) -> datetime:
    """The latest due time a step task may take now: its lead, and the timer's tolerance."""
    return now + timedelta(seconds=settings.DRIP_STEP_LEAD) + EARLY_TOLERANCE


def _run_claimed(step_ids: list[int], token: str, now: datetime) -> None:
    with transaction.atomic():
        # Loaded locked and still ours: a step the reconciler re-claimed meanwhile (this run
        # stalled past its grace) belongs to that claim now, and this run leaves it alone.
        batch = list(
            Step.objects.select_related(*STEP_RELATED).select_for_update(of=("self",))
            .filter(id__in=step_ids, status=Step.Status.RUNNING).claimed_by(token)
        )
        blocked: list[tuple[Step, Block]] = []
        runnable: list[Step] = []
        for step in batch:
            block = _decide(step, now)
            if block:
                step.status, step.reason, step.finished_at = block.status, block.reason, now
                blocked.append((step, block))
            else:
                runnable.append(step)
        Step.objects.bulk_update([s for s, _ in blocked], ["status", "reason", "finished_at"])
        Step.objects.filter(id__in=[s.id for s in runnable]).finish_run(token, now)
        messages = _messages_for(runnable, now)
        for message, pk in zip(messages, insert_rows(Message, [_row(m) for m in messages], now), strict=True):
            message.pk = pk
        by_due: dict[datetime, list[tuple[int, str]]] = defaultdict(list)
        for m in messages:
            by_due[m.next_attempt_at].append((m.pk, m.channel))
        for due, pairs in by_due.items():
            transaction.on_commit(partial(enqueue_sends, pairs, eta=due if due > now else None))
    _log_outcomes(blocked, runnable, messages, now)


def _log_outcomes(blocked: list[tuple[Step, Block]], runnable: list[Step], messages: list[Message], now: datetime) -> None:
    for step, block in blocked:
        step_log(step).info("step %s %s: %s", step.key, block.status, block.reason)
    # Every message leaves queued: the sender decides consent and the rest at the send.
    per_step = Counter(m.step_id for m in messages)
    for step in runnable:
        step_log(step).info("step %s done at %s (%d queued)", step.key, now.isoformat(), per_step[step.id])


def _decide(step: Step, now: datetime) -> Block | None:
    try:
        return step_block(step, now)
    except Exception as exc:  # a bug must fail this step once, not its whole batch, nor loop
        step_log(step).exception("step %s crashed while being checked", step.key)
        return Block(Step.Status.FAILED, f"step check crashed: {type(exc).__name__}: {exc}")


def _messages_for(runnable: list[Step], now: datetime) -> list[Message]:
    """Every channel of every step gets a queued message: consent, the address and quiet
    hours may change before the due time, so the sender decides them at the send. Only
    what is allowed now is rendered ahead (the rest is likely skipped: no work wasted)."""
    consent = ConsentView(s.registration.contact for s in runnable)
    messages = []
    for step in runnable:
        _, definition = funnel_step(step)
        registration = step.registration
        contact = registration.contact
        for channel in definition.channels:
            message = Message(
                step=step, contact=contact, registration=registration, channel=channel,
                template_type=definition.template_type, to=contact.address_for(channel), purpose=definition.purpose,
                status=Message.Status.QUEUED,
                # Prepared ahead (DRIP_STEP_LEAD): not sent before the step is due.
                expires_at=step.expires_at, next_attempt_at=max(now, step.due_at),
            )
            if not channel_block_reason(contact, channel, consent):
                render_ahead(message)
            messages.append(message)
    return messages


# What _messages_for sets on a Message; insert_rows gives the other columns their defaults.
MESSAGE_COLUMNS = ("step_id", "contact_id", "registration_id", "channel", "template_type", "to", "purpose", "status",
                   "error", "expires_at", "next_attempt_at", "subject", "body", "html", "rendered_from")


def _row(message: Message) -> dict[str, object]:
    return {name: getattr(message, name) for name in MESSAGE_COLUMNS}


def _rearm_early(step_ids: list[int], now: datetime) -> None:
    """A task that arrives before its steps are due (clocks of hosts apart by more than the
    tolerance) asks again at the due time rather than leaving them to the reconciler.
    Duplicates this may create are harmless: only one claim can win."""
    early = Step.objects.filter(id__in=step_ids, status=Step.Status.ENQUEUED, due_at__gt=ready_until(now))
    enqueue_steps(early.values_list("id", "due_at"))
