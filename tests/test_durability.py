"""What must survive: duplicate deliveries, racing dispatchers, a flushed Redis, a worker
killed with SIGKILL. Each message reaches the provider exactly once."""
from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

from celery.contrib.testing.worker import start_worker
from django.db import connections
from django.utils import timezone

from celery_app import app
from drip.models import STEP_MAX_ATTEMPTS, Message, Step
from drip.tasks import run_steps, send_messages
from drip.timer import scheduler
from drip.timer.publish import waiting_tasks
from tests.factories import enroll, make_contact, make_event
from tests.helpers import QUEUES, Ticker, assert_each_sent_once, flush_broker, settled, wait_for_worker, wait_until, worker_process


def test_the_same_step_and_message_tasks_delivered_twice_send_once(worker, providers, scaled):
    registration = enroll(make_contact(), make_event(starts_in=5))
    steps = list(Step.objects.filter(registration=registration))
    for step in steps:  # two extra deliveries of every step task, at once
        run_steps.delay([step.id])
        run_steps.delay([step.id])
    wait_until(lambda: settled(registration))
    for message in Message.objects.all():
        send_messages.apply_async([[message.id]], queue=message.channel)
        send_messages.apply_async([[message.id]], queue=message.channel)
    time.sleep(1)
    assert_each_sent_once(providers, 5)
    assert all(s.attempts == 1 for s in Step.objects.all())


def test_two_dispatchers_at_once_claim_each_step_once(transactional_db, settings):
    settings.DRIP_ENQUEUE_HORIZON = 1
    event = make_event(starts_in=3600 * 48)
    for _ in range(40):
        enroll(make_contact(), event)
    # Bring every pending step into the horizon, then race two dispatchers for them.
    Step.objects.filter(status=Step.Status.PENDING).update(due_at=timezone.now())
    pending = set(Step.objects.filter(status=Step.Status.PENDING).values_list("id", flat=True))
    claimed: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def dispatcher(slot: int) -> None:
        barrier.wait()
        for _ in range(5):
            claimed[slot] += [step_id for step_id, _ in scheduler.claim_due_steps()]
        connections.close_all()

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(pending) == 80
    assert not set(claimed[0]) & set(claimed[1])
    assert set(claimed[0]) | set(claimed[1]) == pending
    flush_broker()  # the claimed tasks were enqueued; no worker here to run them


def test_a_flushed_redis_loses_nothing(transactional_db, providers, celery_app, scaled):
    """Tasks enqueued while no worker runs, then Redis flushed: the reconciler re-enqueues
    them from the Step rows and every message goes out exactly once."""
    flush_broker()
    scaled.DRIP_RECONCILE_GRACE = 1.0
    # 1 h of funnel time is half a second here: room for the recovered 1 h reminders to reach
    # the stub before the start on a 2-core machine (at 21600 it was 0.17 s).
    scaled.DRIP_TIME_SCALE = 7200
    registrations = [enroll(make_contact(), make_event(starts_in=14)) for _ in range(3)]
    assert Step.objects.filter(status=Step.Status.ENQUEUED).count() == 9
    flush_broker()
    with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False, queues=QUEUES):
        ticker = Ticker(0.2)
        ticker.thread.start()
        try:
            wait_until(lambda: all(settled(r) for r in registrations), timeout=30)
        finally:
            ticker.stop.set()
            ticker.thread.join()
    # The welcomes were due at once and go out late after recovery; they count as sent.
    assert_each_sent_once(providers, 15)


def test_a_restarted_worker_recovers_the_reminders_it_held(worker, providers, celery_app, scaled):
    scaled.DRIP_RECONCILE_GRACE = 1.0
    # 1 h of funnel time is half a second: the 24 h reminder is due 12 s before the start, the
    # 1 h reminder 0.5 s before it. The stop and restart below took 6 s on RabbitMQ in CI, past
    # the 6 s start this test once used, so every reminder expired before it could be recovered.
    scaled.DRIP_TIME_SCALE = 7200
    registration = enroll(make_contact(), make_event(starts_in=24))
    providers.wait_for(1)
    # The running worker holds the reminders as ETA tasks; stop it and flush the broker too.
    worker.stop()
    flush_broker()
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False, queues=QUEUES):
        ticker = Ticker(0.2)
        ticker.thread.start()
        try:
            wait_until(lambda: settled(registration), timeout=30)
        finally:
            ticker.stop.set()
            ticker.thread.join()
    assert_each_sent_once(providers, 5)


def test_the_reconciler_leaves_a_task_waiting_in_a_busy_queue_and_recovers_it_once_gone(transactional_db, settings):
    """Past the grace, an enqueued step whose task still waits in the `steps` queue (a
    backlog no worker has reached yet) is not published again: doing so doubled a backlog at
    every run. Once the queue has lost it (purged here, the broker's reset mark kept), it is."""
    settings.DRIP_RECONCILE_GRACE = 1.0
    flush_broker()
    scheduler.reconcile()  # the first check after a flush is a "reset": the mark is set now
    enroll(make_contact(), make_event(starts_in=3600 * 48))
    welcome = Step.objects.get(key="welcome", status=Step.Status.ENQUEUED)
    long_ago = timezone.now() - timedelta(minutes=5)
    Step.objects.filter(id=welcome.id).update(due_at=long_ago, enqueued_at=long_ago)
    assert waiting_tasks(["steps"])["steps"] == 1
    try:
        assert scheduler.reconcile()["steps_reenqueued"] == 0
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge("steps")
        assert waiting_tasks(["steps"])["steps"] == 0
        assert scheduler.reconcile()["steps_reenqueued"] == 1
        assert waiting_tasks(["steps"])["steps"] == 1
    finally:
        flush_broker()


def test_a_step_left_running_by_a_dead_worker_is_run_again_once(transactional_db, settings):
    settings.DRIP_RECONCILE_GRACE = 1.0
    registration = enroll(make_contact(), make_event(starts_in=3600))
    step = Step.objects.get(registration=registration, key="welcome")
    long_ago = timezone.now() - timedelta(minutes=5)
    Step.objects.filter(id=step.id).update(status=Step.Status.RUNNING, started_at=long_ago)
    assert scheduler.reconcile()["steps_reenqueued"] == 1
    from drip.engine.steps import run_step_batch

    run_step_batch([step.id])
    run_step_batch([step.id])
    step.refresh_from_db()
    assert step.status == Step.Status.DONE
    assert Message.objects.filter(step=step).count() == 1
    flush_broker()


def test_a_worker_killed_with_sigkill_mid_funnel_still_sends_everything_once(transactional_db, providers, settings):
    """The worker dies while it holds the 24 h reminders as ETA tasks (their messages,
    prepared DRIP_STEP_LEAD ahead; claimed, unacknowledged); the 1 h reminders still wait in
    the database. A new worker and the reconciler finish the funnel: every message once,
    none lost."""
    # 1 h of funnel time is 0.5 s here: room for ten sends between the 1 h reminder and the start.
    knobs = {"DRIP_TIME_SCALE": 7200, "DRIP_RECONCILE_GRACE": 0.5, "DRIP_ENQUEUE_HORIZON": 1}
    for name, value in knobs.items():
        setattr(settings, name, value)
    env = {name: str(value) for name, value in knobs.items()}
    flush_broker()
    ticker = Ticker(0.2)
    ticker.thread.start()
    first = worker_process(providers, env)
    second = None
    try:
        wait_for_worker()
        event = make_event(starts_in=16)  # 24 h reminders due at +4 s, 1 h reminders at +15.5 s
        registrations = [enroll(make_contact(), event) for _ in range(5)]
        providers.wait_for(5, timeout=30)
        prepared = Message.objects.filter(step__key="reminder_24h", status=Message.Status.QUEUED)
        wait_until(lambda: prepared.count() == 10, timeout=15)
        assert Step.objects.filter(key="reminder_1h", status=Step.Status.PENDING).count() == 5
        assert len(providers.messages()) == 5
        os.killpg(first.pid, signal.SIGKILL)  # the main process and its pool children, no goodbye
        first.wait()
        second = worker_process(providers, env)
        wait_for_worker()
        wait_until(lambda: all(settled(r) for r in registrations), timeout=40)
    finally:
        ticker.stop.set()
        ticker.thread.join()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert_each_sent_once(providers, 25)
    flush_broker()



def test_a_step_that_keeps_dying_is_failed_instead_of_retried_forever(transactional_db, settings):
    settings.DRIP_RECONCILE_GRACE = 1.0
    registration = enroll(make_contact(), make_event(starts_in=3600))
    step = Step.objects.get(registration=registration, key="welcome")
    Step.objects.filter(id=step.id).update(
        status=Step.Status.RUNNING, started_at=timezone.now() - timedelta(minutes=5), attempts=STEP_MAX_ATTEMPTS
    )
    assert scheduler.reconcile()["steps_reenqueued"] == 0
    step.refresh_from_db()
    assert step.status == Step.Status.FAILED and "did not finish in 5 attempts" in step.reason
    flush_broker()


def test_after_a_broker_reset_every_enqueued_step_is_recovered_however_many(transactional_db, monkeypatch):
    monkeypatch.setattr(scheduler, "CLAIM_BATCH", 3)  # recovery must not stop at one batch
    event = make_event(starts_in=3600 * 48)
    for _ in range(3):
        enroll(make_contact(), event)  # 3 welcomes enqueued at once, 6 reminders pending
    Step.objects.filter(status=Step.Status.PENDING).update(status=Step.Status.ENQUEUED, enqueued_at=timezone.now())
    flush_broker()  # the tasks and Drip's mark are gone
    assert scheduler.reconcile()["steps_reenqueued"] == 9
    assert scheduler.reconcile()["steps_reenqueued"] == 0  # the mark is back: nothing more to do
    flush_broker()
