"""The one place that publishes tasks. Every stage that hands work on (the scheduler, the
step runner, the sender, the services) imports this module at the top; it publishes by task
name, so it knows no task definition and nothing imports back up from it.

Work travels in batches: a step task takes the steps due at one instant (every
registration's reminder of an event), a send task a list of messages. A batch costs one
claim, one load and one consent read instead of one of each per row, and one task instead of
one per row: that is what lets a worker keep up with a large event (bench/README.md).

Every send batch holds one channel and goes to that channel's queue (`email`, `sms`), so a
provider that fails or hangs holds only its own channel's senders. Callers that know the
channels pass (id, channel) pairs; bare ids are looked up in one query.

The broker is Redis or RabbitMQ (celery_app.py declares the queues); `broker_was_reset`
tells the reconciler when the broker lost everything it held.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import cast

import amqp
import redis
from celery.utils.functional import chunks
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import ChannelError
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from celery_app import SEND_QUEUES, app, uses_rabbitmq
from drip.models import Message

RUN_STEPS = "drip.tasks.run_steps"
SEND_MESSAGES = "drip.tasks.send_messages"
RUN_CONSOLE_JOB = "drip.tasks.run_console_job"
VERIFY_MESSAGES = "drip.tasks.verify_messages"


def enqueue_steps(claimed: Iterable[tuple[int, datetime]], batch_size: int | None = None) -> None:
    """One task per batch of steps due at the same instant, DRIP_STEP_LEAD before that
    instant: steps due at different times never wait for each other, and their messages
    are ready to go when the instant comes (steps.run_step_batch)."""
    by_due: dict[datetime, list[int]] = defaultdict(list)
    for step_id, due_at in claimed:
        by_due[due_at].append(step_id)
    lead = timedelta(seconds=settings.DRIP_STEP_LEAD)
    for due_at, ids in sorted(by_due.items()):
        for batch in batches(ids, _size(batch_size, settings.DRIP_STEP_BATCH)):
            _send(RUN_STEPS, batch, due_at - lead)


def enqueue_sends(
    messages: Iterable[int | tuple[int, str]], eta: datetime | None = None, batch_size: int | None = None
) -> None:
    """Send tasks for these messages, one channel per batch, each to its channel's queue.
    `messages` are (id, channel) pairs, or ids whose channels are read in one query."""
    by_channel: dict[str, list[int]] = defaultdict(list)
    for message_id, channel in _with_channels(messages):
        by_channel[channel].append(message_id)
    for channel, ids in sorted(by_channel.items()):
        for batch in batches(ids, _size(batch_size, settings.DRIP_SEND_BATCH)):
            _send(SEND_MESSAGES, batch, eta, queue=send_queue(channel))


def enqueue_when_due(
    enqueue: Callable[..., None], rows: Iterable[tuple[int, str, datetime]], now: datetime
) -> None:
    """Recovered (id, channel, due) rows, each at its time, after commit: those due now in
    batches, one waiting out a retry, a rate-limit slot or a lookup's delay with its own ETA
    (its claim would refuse it earlier anyway; a duplicate task is harmless)."""
    rows = list(rows)
    transaction.on_commit(partial(enqueue, [(mid, channel) for mid, channel, at in rows if at <= now]))
    for mid, channel, at in rows:
        if at > now:
            transaction.on_commit(partial(enqueue, [(mid, channel)], eta=at))


def enqueue_console_job(job_id: int) -> None:
    """A console job (a large CSV import, completing a large event) on the steps queue."""
    _send(RUN_CONSOLE_JOB, [job_id], None)


def enqueue_verifications(messages: Iterable[tuple[int, str]], eta: datetime | None = None) -> None:
    """Lookup tasks for messages whose send outcome is unknown, on their channel's queue
    (a lookup waits on the same provider as a send)."""
    by_channel: dict[str, list[int]] = defaultdict(list)
    for message_id, channel in messages:
        by_channel[channel].append(message_id)
    for channel, ids in sorted(by_channel.items()):
        for batch in batches(ids, settings.DRIP_SEND_BATCH):
            _send(VERIFY_MESSAGES, batch, eta, queue=send_queue(channel))


def send_queue(channel: str) -> str:
    return SEND_QUEUES[channel]


def _with_channels(messages: Iterable[int | tuple[int, str]]) -> list[tuple[int, str]]:
    pairs: list[tuple[int, str]] = []
    bare: list[int] = []
    for item in messages:
        if isinstance(item, tuple):
            pairs.append(item)
        else:
            bare.append(item)
    if bare:
        found = dict(Message.objects.filter(id__in=bare).values_list("id", "channel"))
        # A message deleted meanwhile has nothing left to send.
        pairs += [(mid, found[mid]) for mid in bare if mid in found]
    return pairs


def _send(task: str, batch: list[int], eta: datetime | None, queue: str | None = None) -> None:
    eta = _eta(eta)
    if eta is not None:
        _declare_delay_exchanges()
    app.send_task(task, (batch,), eta=eta, queue=queue)


_delays_declared = False


def _declare_delay_exchanges() -> None:
    """On RabbitMQ an ETA task is published to the delay exchanges of native delayed
    delivery, which a worker declares when it starts: a web process may publish first (a
    fresh broker), so it declares them too, once per process (declaring is idempotent)."""
    global _delays_declared
    if _delays_declared or not uses_rabbitmq():
        return
    with app.connection_for_write() as conn:
        declare_native_delayed_delivery_exchanges_and_queues(conn, app.conf.broker_native_delayed_delivery_queue_type)
        for queue in app.amqp.queues.values():
            queue(conn.default_channel).declare()  # the queue, its exchange and binding first
            bind_queue_to_native_delayed_delivery_exchange(conn, queue)
    _delays_declared = True


def _eta(eta: datetime | None) -> datetime | None:
    """RabbitMQ's native delayed delivery counts whole seconds and refuses a delay under one
    (Celery 5.7 raises ValueError for 0 < countdown < 1, the countdown being taken a moment
    after this): an ETA less than MIN_DELAY away is moved to MIN_DELAY. Redis keeps it exact."""
    if eta is None or not uses_rabbitmq():
        return eta
    now = timezone.now()
    return max(eta, now + MIN_DELAY) if eta > now else eta


MIN_DELAY = timedelta(seconds=1.2)


def batches(items: Iterable[int], size: int) -> Iterable[list[int]]:
    """Celery's own `chunks`, for every loop that cuts ids into statements or tasks."""
    return chunks(iter(items), size)


def _size(wanted: int | None, most: int) -> int:
    """A caller may ask for smaller batches than the setting allows, never larger."""
    return most if wanted is None else max(1, min(wanted, most))


BROKER_MARK = "drip:broker-mark"  # a Redis key, or a RabbitMQ queue holding one message
DELAY_QUEUES = tuple(f"celery_delayed_{level}" for level in range(28))  # native delayed delivery


def broker_was_reset() -> bool:
    """True when the broker lost its data since the last check: the mark left there is gone.
    Redis: flushed, or restarted without persistence. RabbitMQ: the node or vhost lost its
    definitions and messages (a new node, a deleted vhost, every queue purged). A purge of
    one queue alone leaves the mark: the reconciler recovers that work after its grace.
    The first check ever also answers True (harmless: every task claims its rows)."""
    url = settings.CELERY_BROKER_URL
    if uses_rabbitmq(url):
        return _rabbitmq_mark_was_missing()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return False
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return bool(client.set(BROKER_MARK, timezone.now().isoformat(), nx=True))
    finally:
        client.close()


def _rabbitmq_mark_was_missing() -> bool:
    with app.connection_for_write() as conn:
        channel = cast(amqp.Channel, conn.channel())
        try:
            declared = channel.queue_declare(
                BROKER_MARK, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
            )
            _, message_count, _ = declared or ("", 0, 0)
            if message_count:
                return False
            # Straight into the mark queue (the default exchange), which nothing consumes;
            # confirmed, so the next check sees it.
            channel.confirm_select()
            channel.basic_publish_confirm(amqp.Message("mark", delivery_mode=2), exchange="", routing_key=BROKER_MARK)
            return True
        finally:
            channel.close()


def waiting_tasks(queues: Iterable[str]) -> dict[str, int]:
    """Tasks waiting in each queue that no worker has received yet (an ETA task a Redis
    worker holds in memory is not counted, nor one in RabbitMQ's delay queues). A queue the
    broker does not know holds none."""
    counts: dict[str, int] = {}
    with app.connection_for_write() as conn:
        errors: tuple[type[BaseException], ...] = (*conn.channel_errors, ChannelError)
        for name in queues:
            # Redis' virtual channel and py-amqp's both answer a passive declare with the count.
            channel = cast(amqp.Channel, conn.channel())
            try:
                declared = channel.queue_declare(name, passive=True)
            except errors:
                counts[name] = 0  # not declared: nothing waits in it (RabbitMQ closed the channel)
            else:
                counts[name] = int(declared[1]) if declared else 0  # (queue, message_count, consumer_count)
                channel.close()
    return counts
