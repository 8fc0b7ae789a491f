"""Fast failover: a worker killed with SIGKILL while it holds ETA tasks; the others run its
work within seconds (not after Redis's visibility timeout or the reconciler's grace), each
message once. A live worker, however busy, keeps its own."""
from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings as django_settings
from django.db import connection, connections, transaction
from django.utils import timezone

from celery_app import uses_rabbitmq
from drip.models import Channel, Message, Step, Worker
from drip.timer import failover
from drip.timer.publish import broker_was_reset
from tests.factories import enroll, make_contact, make_event, steps_due_together
from tests.helpers import QUEUES, Ticker, assert_each_sent_once, flush_broker, settled, wait_for_worker, wait_until, worker_process

# 1 h of funnel time is 1 s. The reconciler's grace stays at its default (120 s): what
# recovers the dead worker's tasks here is failover, nothing else.
# No step lead: the reminders' step tasks wait as ETA tasks in the worker that is killed
# (with a lead they would be prepared at once, and their send tasks held instead).
KNOBS = {"DRIP_TIME_SCALE": 3600, "DRIP_RECONCILE_GRACE": 120, "DRIP_WORKER_HEARTBEAT": 2, "DRIP_WORKER_DEAD_AFTER": 6,
         "DRIP_STEP_LEAD": 0}
FAILOVER_BOUND = 10.0  # seconds after the kill (or after the due time, if later)
REMINDERS = ("reminder_24h", "reminder_1h")


def test_a_killed_worker_s_reminders_run_on_another_within_seconds(transactional_db, providers, settings, celery_app):
    for name, value in KNOBS.items():
        setattr(settings, name, value)
    flush_broker()
    broker_was_reset()  # plant the mark now: the reconciler must not re-enqueue everything
    first = worker_process(providers, {name: str(value) for name, value in KNOBS.items()})
    ticker = Ticker(2.0)  # beat's default failover period
    try:
        wait_for_worker()
        # 24 h reminders due at +5 s (soon after the kill), 1 h reminders at +28 s (long after).
        event = make_event(starts_in=29)
        registrations = [enroll(make_contact(), event) for _ in range(3)]
        providers.wait_for(3)  # the welcomes: the first worker is up and working
        holder = Worker.objects.get(pid=first.pid)
        _wait_for_holds(Step.objects.filter(key__in=REMINDERS, status=Step.Status.ENQUEUED), 6, holder)
        with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False, queues=QUEUES,
                          shutdown_timeout=30, loglevel="WARNING"):
            ticker.thread.start()
            killed_at = timezone.now()
            os.killpg(first.pid, signal.SIGKILL)  # the main process and its pool children, no goodbye
            first.wait()
            wait_until(lambda: all(settled(r) for r in registrations), timeout=45)
    finally:
        ticker.stop.set()
        if ticker.thread.is_alive():
            ticker.thread.join()
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert_each_sent_once(providers, 15)
    holder.refresh_from_db()
    assert holder.failed_over_at is not None
    _report_and_check_timing(killed_at, holder)
    flush_broker()


def _wait_for_holds(steps, count: int, holder: Worker | None) -> None:
    """Redis: the worker reserves the ETA tasks at once and records them. RabbitMQ (native
    delayed delivery): they wait in the broker's delay queues until due, no worker holds them,
    and a killed worker's unacknowledged tasks go back to the queue at once."""
    if uses_rabbitmq(django_settings.CELERY_BROKER_URL):
        time.sleep(1.0)
        assert not steps.filter(held_by__isnull=False).exists()
        return
    wait_until(lambda: steps.filter(held_by__isnull=False).count() == count, timeout=10)
    if holder is not None:
        assert set(steps.values_list("held_by", flat=True)) == {holder.pk}


def _report_and_check_timing(killed_at: datetime, holder: Worker) -> None:
    assert holder.failed_over_at is not None
    declared = (holder.failed_over_at - killed_at).total_seconds()
    for key in REMINDERS:
        steps = Step.objects.filter(key=key)
        assert all(s.status == Step.Status.DONE and s.attempts == 1 for s in steps)
        due = max(s.due_at for s in steps)
        rearmed = max(s.enqueued_at or due for s in steps)
        sent = max(m.sent_at or due for m in Message.objects.filter(step__key=key))
        print(f"\nfailover {key}: due {(due - killed_at).total_seconds():+.1f} s after the kill; "
              f"worker declared dead {declared:.1f} s, last (re-)enqueued {(rearmed - killed_at).total_seconds():+.1f} s, "
              f"last sent {(sent - killed_at).total_seconds():.1f} s after the kill ({(sent - due).total_seconds():+.2f} s vs due)")
        assert sent <= max(killed_at + timedelta(seconds=FAILOVER_BOUND), due + timedelta(seconds=1.0))


def test_a_busy_worker_that_is_alive_keeps_its_work(worker, beat, providers, settings):
    """Failover ticks every 0.2 s with a hair trigger (dead after 1 s without a heartbeat)
    while the worker's every thread waits on a slow provider: nothing of it is taken over."""
    settings.DRIP_TIME_SCALE = 3600
    settings.DRIP_RECONCILE_GRACE = 120
    settings.DRIP_WORKER_HEARTBEAT, settings.DRIP_WORKER_DEAD_AFTER = 0.25, 1.0
    providers.slow_down(1.0)
    broker_was_reset()  # plant the mark now: a first reconcile must not re-arm everything
    event = make_event(starts_in=14)  # 24 h reminders past due (skipped), 1 h reminders at +13 s
    registrations = [enroll(make_contact(), event) for _ in range(5)]
    held = Step.objects.filter(key="reminder_1h", status=Step.Status.ENQUEUED)
    _wait_for_holds(held, 5, None)
    armed = dict(held.values_list("id", "enqueued_at"))
    providers.wait_for(5, timeout=15)  # the welcomes, slowly: the worker is busy for seconds
    providers.slow_down(0)
    wait_until(lambda: all(settled(r) for r in registrations), timeout=30)
    assert_each_sent_once(providers, 15)
    assert not Worker.objects.filter(failed_over_at__isnull=False).exists()
    for step in Step.objects.filter(id__in=armed):
        assert step.enqueued_at == armed[step.id] and step.attempts == 1  # never re-armed


def test_two_failovers_racing_publish_each_row_once_and_leave_provider_calls_alone(transactional_db, published, settings):
    """Rows held by a dead worker, by a live one and by one that stopped cleanly; two failover
    runs at once re-arm the dead one's rows, each published by one run only."""
    settings.DRIP_WORKER_DEAD_AFTER = 6
    now = timezone.now()
    long_ago = now - timedelta(minutes=1)
    dead = Worker.objects.create(name="dead@host", started_at=long_ago, seen_at=long_ago)
    stopped = Worker.objects.create(name="stopped@host", started_at=long_ago, seen_at=long_ago, stopped_at=long_ago)
    alive = Worker.objects.create(name="alive@host", started_at=long_ago, seen_at=now)
    Worker.objects.filter(pk=alive.pk).beat()
    registrations = [enroll(make_contact(), make_event(starts_in=3600 * 48)) for _ in range(6)]
    steps = list(Step.objects.filter(key="welcome").order_by("id"))
    for step, holder in zip(steps, [dead, dead, dead, alive, stopped, None], strict=True):
        Step.objects.filter(id=step.id).update(status=Step.Status.ENQUEUED, held_by=holder)
    # Messages of the dead worker: waiting for a retry, claimed before the call, in the call.
    waiting, claimed, in_call = (
        Message.objects.create(step=steps[i], contact=registrations[i].contact, registration=registrations[i],
                               channel="email", template_type="welcome", held_by=dead)
        for i in range(3)
    )
    Message.objects.filter(id=waiting.id).update(next_attempt_at=now + timedelta(seconds=30))
    Message.objects.filter(id=claimed.id).update(status=Message.Status.SENDING, attempts=1, claim_token="t1")
    Message.objects.filter(id=in_call.id).update(status=Message.Status.SENDING, attempts=1, claim_token="t2", sending_at=now)
    published.clear()
    barrier = threading.Barrier(2)
    results: list[dict[str, int]] = []

    def run() -> None:
        barrier.wait()
        results.append(failover.fail_over_dead_workers())
        connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]

    step_ids = [i for name, args, _ in published if name == "drip.tasks.run_steps" for i in args[0]]
    message_ids = [i for name, args, _ in published if name == "drip.tasks.send_messages" for i in args[0]]
    assert sorted(step_ids) == [s.id for s in steps[:3]]  # once each, and only the dead worker's
    assert sorted(message_ids) == sorted([waiting.id, claimed.id])
    assert sum(r["steps_rearmed"] for r in results) == 3 and sum(r["messages_rearmed"] for r in results) == 2
    eta = {args[0][0]: at for name, args, at in published if name == "drip.tasks.send_messages"}
    assert eta[waiting.id] is not None and eta[claimed.id] is None  # the retry keeps its time
    claimed.refresh_from_db()
    assert (claimed.status, claimed.attempts, claimed.lost_claims) == (Message.Status.QUEUED, 0, 1)
    in_call.refresh_from_db()
    assert (in_call.status, in_call.claim_token, in_call.held_by_id) == (Message.Status.SENDING, "t2", dead.pk)
    assert Worker.objects.get(pk=dead.pk).failed_over_at is not None
    assert Worker.objects.filter(failed_over_at__isnull=False).count() == 1
    assert failover.fail_over_dead_workers()["dead_workers"] == 0  # taken over once
    flush_broker()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks are PostgreSQL's")
def test_a_hold_never_waits_for_rows_a_running_task_has_locked(transactional_db):
    """A task received at its due time runs at once in a pool process while its worker's
    holds thread marks its rows: the hold skips what the task has locked, so the two can never
    deadlock (PostgreSQL used to break one by failing the step task)."""
    steps = steps_due_together(2, timezone.now())
    Step.objects.filter(pk__in=[s.pk for s in steps]).update(status=Step.Status.ENQUEUED)
    messages = [Message.objects.create(contact=s.registration.contact, channel=Channel.EMAIL, template_type="welcome") for s in steps]
    worker = Worker.objects.create(name="w@host", started_at=timezone.now(), seen_at=timezone.now())
    locked, release = threading.Event(), threading.Event()

    def task() -> None:
        with transaction.atomic():
            list(Step.objects.select_for_update().filter(pk=steps[0].pk))
            list(Message.objects.select_for_update().filter(pk=messages[0].pk))
            locked.set()
            release.wait(10)
        connection.close()

    running = threading.Thread(target=task)
    running.start()
    assert locked.wait(5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # waiting would fail the test, not hang it
        assert Step.objects.filter(pk__in=[s.pk for s in steps]).hold(worker.pk) == 1
        assert Message.objects.filter(pk__in=[m.pk for m in messages]).hold(worker.pk) == 1
    finally:
        release.set()
        running.join()
    assert list(Step.objects.order_by("pk").values_list("held_by", flat=True)) == [None, worker.pk]
    assert list(Message.objects.order_by("pk").values_list("held_by", flat=True)) == [None, worker.pk]
