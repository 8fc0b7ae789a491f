"""Run steps now instead of at their due time: the demo's fast-forward (`simulate`) and the
operator's "run now" on steps. Only the timer moves: the step task still re-validates
registration, event, expiry and consent before anything is sent, like any other run."""
from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from .models import Step
from .publish import batches
from .scheduler import CLAIM_BATCH, claim_due_steps

log = logging.getLogger("drip.fastforward")


def run_steps_now(steps: QuerySet[Step], now: datetime | None = None) -> int:
    """Make every open (pending or enqueued) step of the queryset due now and enqueue it,
    after commit. Returns how many were enqueued; steps already running or finished are left
    as they are."""
    now = now or timezone.now()
    ids = list(steps.order_by().filter(status__in=Step.OPEN).values_list("id", flat=True))
    enqueued = 0
    with transaction.atomic():
        for batch in batches(ids, CLAIM_BATCH):
            Step.objects.filter(id__in=batch).due_now(now)
            enqueued += len(claim_due_steps(now, ids=batch))
    if ids:
        log.info("run now: %d of %d selected steps enqueued, due %s [steps=%s]", enqueued, len(ids), now.isoformat(),
                 ",".join(map(str, ids[:50])))
    return enqueued
