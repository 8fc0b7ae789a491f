"""Queues per channel and the broker as a choice. Every test here runs on the broker of the
run: Redis under `make test`, RabbitMQ (quorum queues) under `make test-amqp`."""
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings as django_settings
from django.utils import timezone

from celery_app import ALL_QUEUES, uses_rabbitmq
from drip.models import Channel, Message, Purpose
from drip.timer.publish import broker_was_reset, enqueue_sends
from tests.factories import make_contact, make_event, register_quietly
from tests.helpers import QUEUES, flush_broker, wait_for_worker, wait_until, worker_process

on_rabbitmq = pytest.mark.skipif(
    not uses_rabbitmq(django_settings.CELERY_BROKER_URL), reason="RabbitMQ only (make test-amqp)"
)


def queued(channel: str, n: int) -> list[Message]:
    """n transactional reminders of one channel, queued and due now, not yet published."""
    event = make_event(starts_in=3 * 3600)
    made = []
    for _ in range(n):
        contact = make_contact()
        made.append(Message.objects.create(
            contact=contact, registration=register_quietly(contact, event), channel=channel, template_type="reminder_1h",
            purpose=Purpose.TRANSACTIONAL, to=contact.address_for(channel), next_attempt_at=timezone.now(),
        ))
    return made


def status_of(messages: list[Message]) -> set[str]:
    return set(Message.objects.filter(pk__in=[m.pk for m in messages]).values_list("status", flat=True))


def test_every_worker_queue_is_declared(worker):
    assert tuple(QUEUES) == ALL_QUEUES  # the tests' workers consume every queue, as the Procfile's worker


def test_beats_ticks_go_to_the_control_queue_and_run_ahead_of_a_step_backlog(transactional_db, celery_app):
    """A backlog of step tasks (a broker recovery re-enqueues thousands) must not hold up
    beat's ticks: in the `steps` queue they waited behind it and expired unrun, so neither
    the reconciler nor the failover ran while they were needed most."""
    from celery.signals import task_postrun

    from celery_app import CONTROL, _beat_schedule

    for entry in _beat_schedule().values():
        assert celery_app.amqp.router.route({}, entry["task"])["queue"].name == CONTROL
    flush_broker()
    backlog = 1500  # step tasks for ids that do not exist: each a quick no-op claim
    celery_app.send_task("drip.tasks.run_steps", args=[[10**9]])  # warms the worker up first
    for _ in range(backlog):
        celery_app.send_task("drip.tasks.run_steps", args=[[10**9]])
    ran: list[str] = []

    def seen(task=None, **_: object) -> None:
        ran.append(task.name)

    task_postrun.connect(seen, weak=False)
    try:
        with start_worker(celery_app, pool="threads", concurrency=1, perform_ping_check=False, queues=QUEUES):
            wait_until(lambda: len(ran) >= 20, timeout=30)
            # Expiry as beat sets it (twice the interval); far less than the backlog takes.
            celery_app.send_task("drip.tasks.fail_over_dead_workers", expires=3)
            wait_until(lambda: "drip.tasks.fail_over_dead_workers" in ran, timeout=10)
            steps_left = backlog - ran.count("drip.tasks.run_steps")
    finally:
        task_postrun.disconnect(seen)
        flush_broker()
    assert steps_left > 100, "the backlog was gone before the tick came: nothing was shown"


def test_a_mixed_batch_is_split_by_channel_into_its_queues(transactional_db, providers, celery_app):
    """Ids only, both channels in one call: a worker on the email queue sends the emails and
    never sees an SMS; the SMS wait in their own queue for a worker of theirs."""
    flush_broker()
    emails, sms = queued(Channel.EMAIL, 3), queued(Channel.SMS, 3)
    mixed = [m.pk for pair in zip(emails, sms, strict=True) for m in pair]
    enqueue_sends(mixed)
    try:
        with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False, queues=["steps", "email"]):
            providers.wait_for(3, kind="email")
            time.sleep(1)
            assert status_of(emails) == {Message.Status.SENT}
            assert status_of(sms) == {Message.Status.QUEUED}
            assert providers.messages(kind="sms") == []
        with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False, queues=["sms"]):
            providers.wait_for(3, kind="sms")
            wait_until(lambda: status_of(sms) == {Message.Status.SENT})
    finally:
        flush_broker()
    assert len(providers.messages()) == 6


@pytest.mark.parametrize("fault", ["503", "hang"])
def test_email_flows_at_full_rate_while_the_sms_provider_fails(transactional_db, providers, celery_app, settings, fault):
    """The Procfile's senders: one on email, one on sms. Twilio answers 503 to everything, or
    hangs; the emails go out as fast as with a healthy Twilio."""
    settings.DRIP_RETRY_BASE_DELAY, settings.DRIP_RETRY_MAX_DELAY = 0.2, 1.0
    flush_broker()
    if fault == "503":
        for _ in range(1000):
            providers.fail_next("sms", 503)
    else:
        providers.hang("sms", 60)  # past the client's timeout: each call holds a thread
    env = {"DRIP_RETRY_BASE_DELAY": "0.2", "DRIP_RETRY_MAX_DELAY": "1.0"}
    sms_sender = worker_process(providers, env, queues=["sms"])
    try:
        wait_for_worker()
        sms = queued(Channel.SMS, 40)
        enqueue_sends([m.pk for m in sms])
        time.sleep(0.5)  # the SMS sender is now stuck on Twilio
        emails = queued(Channel.EMAIL, 40)
        with start_worker(celery_app, pool="threads", concurrency=4, perform_ping_check=False, queues=["steps", "email"]):
            started = time.time()
            enqueue_sends([m.pk for m in emails])
            providers.wait_for(40, timeout=10, kind="email")
            took = time.time() - started
        assert status_of(emails) == {Message.Status.SENT}
        assert providers.messages(kind="sms") == []
        # 40 emails through a loopback stub: well under the time a single hung Twilio call takes.
        assert took < 5, took
    finally:
        os.killpg(sms_sender.pid, signal.SIGKILL)
        sms_sender.wait()
        providers.reset()  # hung requests answer now, recording nothing
        flush_broker()


def test_a_lost_broker_is_detected_by_its_missing_mark(transactional_db):
    flush_broker()  # everything gone, the mark with it
    assert broker_was_reset() is True
    assert broker_was_reset() is False
    assert broker_was_reset() is False
    flush_broker()
    assert broker_was_reset() is True
    flush_broker()


@on_rabbitmq
def test_rabbitmq_queues_are_durable_quorum_queues(worker, celery_app):
    with celery_app.connection_for_write() as conn:
        channel = conn.channel()
        for name in ALL_QUEUES:
            # A passive declare fails unless the queue exists with exactly these arguments.
            channel.queue_declare(name, passive=True)
            channel.queue_declare(name, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        channel.close()
    assert all(q.queue_arguments == {"x-queue-type": "quorum"} for q in celery_app.conf.task_queues)


@on_rabbitmq
def test_an_eta_waits_in_rabbitmq_not_in_the_worker(worker, providers, celery_app):
    """Native delayed delivery: the task sits in RabbitMQ's delay queues until it is due, so
    a worker holds no ETA task it could take down with it, and it arrives on time."""
    [message] = queued(Channel.EMAIL, 1)
    due = timezone.now() + timedelta(seconds=4)
    Message.objects.filter(pk=message.pk).update(next_attempt_at=due)
    enqueue_sends([message.pk], eta=due)
    time.sleep(1.5)
    scheduled = celery_app.control.inspect(timeout=1).scheduled() or {}
    assert not any(scheduled.values()), scheduled  # no worker holds it
    assert providers.messages() == []
    [got] = providers.wait_for(1, timeout=10)
    assert due.timestamp() - 0.5 <= got.at <= due.timestamp() + 3
