"""What several test files share: waiting for a condition, telling a registration has
settled, counting what reached the provider stub, a worker in its own process."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import amqp
import redis
from django.conf import settings as django_settings
from django.db import connection

from drip.domain.consent import active_suppression, latest_record
from drip.models import Contact, Message, Registration, Step

ROOT = Path(__file__).resolve().parent.parent
# Every queue a worker consumes (celery_app.ALL_QUEUES): control, steps, email, sms.
QUEUES = ["control", "steps", "email", "sms"]
# The producer's bearer token in tests (the `api` fixture, tests/conftest.py).
API_TOKEN = "s3cret-token"
# 24 h of funnel time pass in 4 s of real time; 1 h in about 0.17 s.
SCALE = 21600


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def settled(registration: Registration) -> bool:
    """No open step and no message still on its way."""
    return not Step.objects.filter(registration=registration, status__in=[*Step.OPEN, Step.Status.RUNNING]).exists() and not Message.objects.filter(
        registration=registration, status__in=[Message.Status.QUEUED, Message.Status.SENDING]
    ).exists()


def assert_each_sent_once(providers, expected: int) -> None:
    got = providers.messages()
    assert len(got) == expected, [(r.kind, r.to, r.subject or r.text) for r in got]
    per_message = Counter((r.kind, r.to, r.subject or r.text) for r in got)
    assert max(per_message.values()) == 1, per_message
    assert Message.objects.filter(status=Message.Status.SENT).count() == expected


def worker_process(providers, env_extra: dict[str, str], queues: list[str] = QUEUES) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--queues", ",".join(queues),
         "--concurrency", "2", "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=process_env(providers, env_extra), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def process_env(providers, env_extra: dict[str, str]) -> dict[str, str]:
    """The environment of a Celery process of the tests: the test database, the test broker
    (tests.settings), the production backends pointed at the stub."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        database_url = f"sqlite:///{db['NAME']}"
    else:
        database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url,
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": "test-server-token",
        "ANYMAIL_POSTMARK_API_URL": providers.url + "/",
        "SMS_BACKEND": "twilio",
        "TWILIO_ACCOUNT_SID": "ACtest",
        "TWILIO_AUTH_TOKEN": "test-auth-token",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": providers.url,
        **env_extra,
    }


def wait_for_worker(timeout: float = 30) -> None:
    from celery_app import app

    wait_until(lambda: bool(app.control.ping(timeout=0.3)), timeout=timeout)




def purge_broker() -> None:
    """Every task RabbitMQ holds is dropped, and Drip's reset mark with them: a lost broker."""
    from celery_app import ALL_QUEUES, app
    from drip.timer.publish import BROKER_MARK, DELAY_QUEUES

    with app.connection_for_write() as conn:
        for name in (*ALL_QUEUES, BROKER_MARK, *DELAY_QUEUES):
            channel = cast(amqp.Channel, conn.channel())
            try:
                channel.queue_purge(name)
            except conn.channel_errors:
                pass  # not declared (yet): nothing in it; the broker closed this channel
            else:
                channel.close()


def flush_broker() -> None:
    """The broker loses everything: Redis is flushed; RabbitMQ's queues (the delay queues and
    Drip's reset mark included) are purged, and the rate limiter's Redis flushed as on Redis."""
    from celery_app import uses_rabbitmq

    if uses_rabbitmq(django_settings.CELERY_BROKER_URL):
        purge_broker()
    redis.Redis.from_url(django_settings.DRIP_RATE_LIMIT_REDIS_URL).flushdb()
    if not uses_rabbitmq(django_settings.CELERY_BROKER_URL):
        redis.Redis.from_url(django_settings.CELERY_BROKER_URL).flushdb()


class Ticker:
    """What beat does in production: sends the dispatch and reconcile tasks on a timer,
    through the broker, to the worker."""

    def __init__(self, interval: float) -> None:
        from drip.tasks import dispatch_due_steps, fail_over_dead_workers, reconcile

        self.interval = interval
        self.stop = threading.Event()
        self.tasks = (dispatch_due_steps, reconcile, fail_over_dead_workers)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for task in self.tasks:
                task.delay()


@dataclass(frozen=True)
class InForce:
    """What decides a contact's consent on a channel: the address's suppression, else the
    contact's latest record."""

    granted: bool
    source: str
    detail: str
    reason: str
    is_suppression: bool


def current(contact: Contact, channel: str) -> InForce:
    """The consent in force (there must be a suppression or a record)."""
    contact.refresh_from_db()
    suppression = active_suppression(channel, contact.address_for(channel))
    if suppression is not None:
        return InForce(False, suppression.source, suppression.detail, suppression.reason, True)
    record = latest_record(contact, channel)
    assert record is not None
    return InForce(record.granted, record.source, record.detail, record.reason, False)
