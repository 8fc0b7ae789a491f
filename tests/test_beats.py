"""Any number of beats: two real `celery beat` processes (the DatabaseScheduler, on the test
database) tick dispatch and reconcile twice as often as one, and nothing goes out twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from celery.signals import task_prerun
from django.db import connection, connections

from drip.models import Step
from drip.timer import scheduler
from tests.factories import enroll, make_contact, make_event
from tests.helpers import ROOT, assert_each_sent_once, flush_broker, process_env, settled, wait_until

KNOBS = {
    # 1 h of funnel time is 1 s: room for the sends between the 1 h reminder and the start.
    "DRIP_TIME_SCALE": 3600, "DRIP_ENQUEUE_HORIZON": 1,
    # Beat periods are whole seconds in django-celery-beat's tables.
    "DRIP_DISPATCH_INTERVAL": 1, "DRIP_RECONCILE_INTERVAL": 1, "DRIP_RECONCILE_GRACE": 0.5,
}


def beat_process(providers, name: str, log: Path) -> subprocess.Popen:
    env = process_env(providers, {k: str(v) for k, v in KNOBS.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "beat", "--scheduler",
         "django_celery_beat.schedulers:DatabaseScheduler", "--loglevel", "INFO", "--pidfile", "",
         "--schedule", str(log.with_suffix(".db"))],
        cwd=ROOT, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )


def test_two_beats_and_a_worker_send_every_message_once(worker, providers, settings, tmp_path):
    """Every reminder passes through a beat's dispatch (the horizon is 1 s) and a dead-lost
    one through its reconcile; both beats tick both tasks, each message goes out once."""
    for name, value in KNOBS.items():
        setattr(settings, name, value)
    ticks: dict[str, set[str]] = defaultdict(set)

    def count(sender: Any = None, task: Any = None, **kwargs: Any) -> None:
        ticks[str(task.request.origin or "").split("@")[0]].add(task.name)

    task_prerun.connect(count, weak=False)
    beats = [beat_process(providers, f"beat{i}", tmp_path / f"beat{i}.log") for i in range(2)]
    try:
        event = make_event(starts_in=28)  # 24 h reminders due at +4 s, 1 h reminders at +27 s
        registrations = [enroll(make_contact(), event) for _ in range(5)]
        wait_until(lambda: all(settled(r) for r in registrations), timeout=60)
        assert all(b.poll() is None for b in beats), "a beat died"
    finally:
        for beat in beats:
            if beat.poll() is None:
                os.killpg(beat.pid, signal.SIGKILL)
            beat.wait()
        task_prerun.disconnect(count)
    # Both beats really ticked both tasks (a task's origin names the process that sent it).
    for beat in beats:
        assert {"drip.tasks.dispatch_due_steps", "drip.tasks.reconcile"} <= ticks[f"gen{beat.pid}"], (beat.pid, ticks)
    assert_each_sent_once(providers, 25)
    assert Step.objects.exclude(status=Step.Status.DONE).count() == 0
    flush_broker()


@pytest.mark.skipif(os.environ.get("DATABASE_URL", "").startswith("sqlite") or not os.environ.get("DATABASE_URL"),
                    reason="advisory locks are PostgreSQL's; SQLite runs on one machine")
def test_a_second_reconcile_skips_while_one_holds_the_lock(transactional_db):
    """The lock is transaction-scoped (pg_try_advisory_xact_lock), so it works through a
    PgBouncer in transaction mode and is released by a commit, a rollback or a dead client."""
    holding, release = threading.Event(), threading.Event()

    def other_reconciler() -> None:
        from django.db import transaction

        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [scheduler.RECONCILE_LOCK])
            holding.set()
            release.wait(10)
        connections.close_all()

    thread = threading.Thread(target=other_reconciler)
    thread.start()
    try:
        assert holding.wait(10)
        assert scheduler.reconcile()["skipped"] == 1
    finally:
        release.set()
        thread.join()
    assert "skipped" not in scheduler.reconcile()  # released with its transaction
    flush_broker()
