"""Fast failover: the work a dead worker held runs again within seconds.

Beat runs `fail_over_dead_workers` every DRIP_FAILOVER_INTERVAL seconds. A worker whose
heartbeat (drip/timer/workers.py) is older than DRIP_WORKER_DEAD_AFTER, and that did not stop
cleanly, is dead: every row it held that has not reached a provider is re-armed, with a
conditional update that also clears `held_by`, and published after commit:

- steps `enqueued` (an ETA task in its memory) → a new task with the same ETA, so a reminder
  due later still runs at its time; steps `running` (it died mid-run: the outcome commits
  with "done", so nothing happened) → run again, each alone, up to STEP_MAX_ATTEMPTS;
- messages `queued` (an ETA retry or rate-limit wait) → a new task at next_attempt_at;
  `sending` with no provider call recorded → queued again (a lost claim, not an attempt).

Never taken: a message whose provider call was recorded (`sending_at`): it may have reached
the provider, and stays with the reconciler's "interrupted in call" path.

Exactly once, however many beats: two runs racing for the same rows meet in the update
(`held_by` = the dead worker is in its WHERE, and the winner clears it), so each row is
published by one run. The task the dead worker held may come back too (Redis restores it
after the visibility timeout): it finds its rows claimed or done and does nothing. A worker
taken for dead that was only stalled does no harm either: its guarded writes find the rows
no longer its own.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from drip.models import Message, Step, Worker
from drip.timer.publish import enqueue_sends, enqueue_when_due
from drip.timer.scheduler import in_batches, rearm_steps

log = logging.getLogger("drip.failover")
# Worker rows this old are deleted: their holds were taken over (or their rows finished) long ago.
FORGET_AFTER = timedelta(days=7)


def fail_over_dead_workers(now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    Worker.objects.forgotten(FORGET_AFTER).delete()
    dead = list(Worker.objects.dead(settings.DRIP_WORKER_DEAD_AFTER).values_list("id", "name"))
    if not dead:
        return {"dead_workers": 0, "steps_rearmed": 0, "messages_rearmed": 0}
    ids = [worker_id for worker_id, _ in dead]
    counts = {"dead_workers": len(dead), "steps_rearmed": _rearm_steps(ids, now), "messages_rearmed": _rearm_messages(ids, now)}
    # After the re-arm: a hold written between the two (a worker's last, late commit) is
    # still found by the next run, or else by the reconciler after its grace.
    Worker.objects.filter(id__in=ids).taken_over()
    log.warning("workers silent for over %ss, their work handed over: %s %s",
                settings.DRIP_WORKER_DEAD_AFTER, ", ".join(f"{name} (#{pk})" for pk, name in dead), counts)
    return counts


def _rearm_steps(workers: list[int], now: datetime) -> int:
    held = Step.objects.filter(held_by__in=workers)
    running = held.filter(status=Step.Status.RUNNING)
    # The same limit as the reconciler's: a step that kills its worker every time is a bug.
    running.fail_repeated_crashes(now)
    return rearm_steps(held.filter(status=Step.Status.ENQUEUED), now) + rearm_steps(running, now, alone=True)


def _rearm_messages(workers: list[int], now: datetime) -> int:
    held = Message.objects.filter(held_by__in=workers)
    stuck = held.filter(status=Message.Status.SENDING, sending_at__isnull=True)
    # Killed before its provider call again and again: the message is what kills its worker.
    stuck.fail_repeated_crashes(now)
    total = 0
    for rows in in_batches(stuck | held.filter(status=Message.Status.QUEUED), ()):
        total += _take_back([row[0] for row in rows], workers, now)
    return total


def _take_back(ids: list[int], workers: list[int], now: datetime) -> int:
    token = uuid.uuid4().hex
    with transaction.atomic():
        Message.objects.filter(id__in=ids).take_back_from(workers, token, now)
        taken = list(Message.objects.filter(id__in=ids, claim_token=token).values_list("id", "channel", "next_attempt_at"))
        enqueue_when_due(enqueue_sends, taken, now)
    return len(taken)
