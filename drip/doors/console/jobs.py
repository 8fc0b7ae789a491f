"""Console work too large for one request, run by a Celery task with a progress page: a CSV
import of many rows, completing an event with many registrations.

All or nothing, as inline: the task does the whole job in ONE transaction, and the job's
"done" (status, count, result) is written in that same transaction. So a failure, or a
worker killed half-way, leaves nothing imported and the job not done; a retry starts from
scratch. Chunks committed one by one would need undoing on failure, and the welcomes of
the committed chunks would already be on their way (tasks are published on commit). One
transaction holds row locks for the length of the job: bulk enrollment writes ~500+ rows a
second, so the largest file (csv_import.MAX_ROWS) takes seconds, not minutes.

An uncommitted transaction is invisible to the progress page, so the live count goes to
Redis (the rate limiter's), a counter that may be lost without harm: the row has the truth.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from drip.doors.console.csv_import import import_items
from drip.engine import services
from drip.models import ConsoleJob, Event
from drip.support.errors import FieldError
from drip.timer.publish import enqueue_console_job

log = logging.getLogger("drip.console.jobs")
CHUNK = 250  # intake items per intake batch: the progress page's step
# A job still "running" this long after its claim lost its worker (its transaction rolled
# back, so nothing of it was written): it may be claimed again.
STALE = timedelta(minutes=15)
PROGRESS_TTL = 24 * 3600
Progress = Callable[[int, int], None]


def start_import(event: Event, items: list[dict[str, Any]], user_id: int | None) -> ConsoleJob:
    """The validated intake items (csv_import.plan) go into the job row; the task reads them there."""
    return _start(ConsoleJob.Kind.IMPORT, event, {"items": items}, len(items), user_id)


def start_completion(event: Event, attended: set[int], completed_at: datetime | None, force: bool,
                     total: int, user_id: int | None) -> ConsoleJob:
    payload = {"attended": sorted(attended), "completed_at": completed_at.isoformat() if completed_at else None,
               "force": force}
    return _start(ConsoleJob.Kind.COMPLETE, event, payload, total, user_id)


def _start(kind: str, event: Event, payload: dict[str, Any], total: int, user_id: int | None) -> ConsoleJob:
    with transaction.atomic():
        job = ConsoleJob.objects.create(kind=kind, event=event, payload=payload, total=total, created_by_id=user_id)
        transaction.on_commit(lambda: enqueue_console_job(job.pk))
    return job


def run_job(job_id: int) -> bool:
    """The task's body. Returns False when the job was not ours to run (done already, or
    running elsewhere): a second delivery of the task does nothing."""
    token = str(uuid.uuid4())
    now = timezone.now()
    if not ConsoleJob.objects.filter(pk=job_id).claim(token, now, stale=now - STALE):
        return False
    try:
        with transaction.atomic():
            job = ConsoleJob.objects.select_for_update().filter(pk=job_id, claim_token=token).first()
            if job is None:  # claimed again meanwhile (we were taken for dead)
                return False
            done, result = RUNNERS[job.kind](job, lambda n, total: report(job_id, n))
            ConsoleJob.objects.filter(pk=job_id).finish(token, done, result, timezone.now())
    except FieldError as exc:
        ConsoleJob.objects.filter(pk=job_id).fail(token, f"nothing was written: {exc}", timezone.now())
    except Exception as exc:
        log.exception("console job %s failed", job_id)
        ConsoleJob.objects.filter(pk=job_id).fail(token, f"nothing was written: {type(exc).__name__}: {exc}", timezone.now())
    return True


def _run_import(job: ConsoleJob, progress: Progress) -> tuple[int, dict[str, Any]]:
    items = job.payload["items"]
    return len(items), {"registrations": import_items(items, progress, chunk=CHUNK)}


def _run_completion(job: ConsoleJob, progress: Progress) -> tuple[int, dict[str, Any]]:
    payload = job.payload
    completed_at = parse_datetime(payload["completed_at"]) if payload.get("completed_at") else None
    summary = services.complete_event(
        job.event, set(payload.get("attended", [])), completed_at, progress=progress, force=bool(payload.get("force"))
    )
    return sum(summary.branches.values()), summary.as_dict()


RUNNERS: dict[str, Callable[[ConsoleJob, Progress], tuple[int, dict[str, Any]]]] = {
    ConsoleJob.Kind.IMPORT: _run_import,
    ConsoleJob.Kind.COMPLETE: _run_completion,
}


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.DRIP_RATE_LIMIT_REDIS_URL, socket_timeout=2)


def _key(job_id: int) -> str:
    return f"drip:console-job:{job_id}:done"


def report(job_id: int, done: int) -> None:
    try:
        _redis().set(_key(job_id), done, ex=PROGRESS_TTL)
    except redis.RedisError:
        log.warning("console job %s: progress not recorded (Redis unavailable)", job_id)  # the job goes on


def progress(job: ConsoleJob) -> int:
    """How far the job is: the row once finished, the live counter while it runs."""
    if job.finished or job.status == ConsoleJob.Status.QUEUED:
        return job.done
    try:
        live = _redis().get(_key(job.pk))
    except redis.RedisError:
        return 0
    return min(int(live), job.total) if live else 0


def stalled(job: ConsoleJob, now: datetime | None = None) -> bool:
    return job.status == ConsoleJob.Status.RUNNING and job.started_at is not None and \
        job.started_at < (now or timezone.now()) - STALE


def retry(job: ConsoleJob) -> None:
    """Publish the task again for a job whose worker died; its claim decides whether it runs."""
    enqueue_console_job(job.pk)
