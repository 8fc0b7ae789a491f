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
from pathlib import Path

import redis
from django.conf import settings as django_settings
from django.db import connection

from drip.models import Message, Registration, Step

ROOT = Path(__file__).resolve().parent.parent
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


def worker_process(providers, env_extra: dict[str, str]) -> subprocess.Popen:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        database_url = f"sqlite:///{db['NAME']}"
    else:
        database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
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
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--queues", "steps,messages",
         "--concurrency", "2", "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wait_for_worker(timeout: float = 30) -> None:
    from celery_app import app

    wait_until(lambda: bool(app.control.ping(timeout=0.3)), timeout=timeout)




def flush_broker() -> None:
    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).flushdb()


class Ticker:
    """What beat does in production: sends the dispatch and reconcile tasks on a timer,
    through the broker, to the worker."""

    def __init__(self, interval: float) -> None:
        from drip.tasks import dispatch_due_steps, reconcile

        self.interval = interval
        self.stop = threading.Event()
        self.tasks = (dispatch_due_steps, reconcile)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for task in self.tasks:
                task.delay()
