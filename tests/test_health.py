"""/healthz with real components (a Celery worker whose presence heartbeats in the database,
the real broker, beat's PeriodicTask row) and /metrics parsed back with prometheus_client's own parser."""
from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from prometheus_client.parser import text_string_to_metric_families

from drip.models import Channel, DeliveryReport, InboundSms, Message, Step, Worker
from drip.ops import health
from tests.factories import enroll, make_contact, make_event
from tests.helpers import wait_until

METRICS_TOKEN = "m3trics-token"


@pytest.fixture(autouse=True)
def fresh_checks(settings) -> Iterator[None]:
    """Each request here sees the state its test just made: no cached result of the checks
    (tests/test_deploy.py tests the cache), and /metrics with its token."""
    settings.DRIP_HEALTH_CACHE_SECONDS = 0
    settings.DRIP_METRICS_TOKEN = METRICS_TOKEN
    health.forget_checks()
    yield
    health.forget_checks()


def alive(name: str = "someone@host", seen_ago: float = 0) -> Worker:
    """What a worker process's presence thread writes (drip/timer/workers.py): its heartbeat row."""
    seen = timezone.now() - timedelta(seconds=seen_ago)
    return Worker.objects.create(name=name, pid=1, started_at=seen, seen_at=seen)


def beat_ran(seconds_ago: float) -> PeriodicTask:
    """What beat's DatabaseScheduler leaves: the dispatcher's row with its last run."""
    every, _ = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.SECONDS)
    task, _ = PeriodicTask.objects.update_or_create(
        name=health.DISPATCH_TASK_NAME, defaults={"task": "drip.tasks.dispatch_due_steps", "interval": every, "enabled": True},
    )
    PeriodicTask.objects.filter(pk=task.pk).update(last_run_at=timezone.now() - timedelta(seconds=seconds_ago))
    return task


# --- /healthz -----------------------------------------------------------------------------


def test_all_ok_with_a_running_worker_and_a_fresh_beat(worker, client):
    """The worker's presence thread writes its heartbeat row every DRIP_WORKER_HEARTBEAT:
    the one heartbeat both /healthz and failover read."""
    beat_ran(seconds_ago=3)
    wait_until(lambda: Worker.objects.filter(stopped_at__isnull=True).exists(), timeout=10)
    first = Worker.objects.get(stopped_at__isnull=True).seen_at
    wait_until(lambda: Worker.objects.get(stopped_at__isnull=True).seen_at > first, timeout=10)  # and again
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "worker": "ok", "beat": "ok"}}


def test_a_stale_or_stopped_worker_is_no_heartbeat(db, client):
    beat_ran(seconds_ago=1)
    alive("stale@host", seen_ago=90)
    Worker.objects.filter(pk=alive("stopped@host").pk).stop()
    assert "no worker heartbeat" in client.get("/healthz").json()["checks"]["worker"]
    alive("fresh@host", seen_ago=5)
    assert client.get("/healthz").json()["checks"]["worker"] == "ok"


def test_no_worker_is_a_503_naming_the_worker(db, client):
    beat_ran(seconds_ago=1)
    response = client.get("/healthz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert (checks["database"], checks["broker"], checks["beat"]) == ("ok", "ok", "ok")
    assert "no worker heartbeat in the last 60 s" in checks["worker"]
    assert response.json()["status"] == "fail"


def test_a_broker_down_is_a_503_naming_the_broker_within_seconds(db, client, settings):
    beat_ran(seconds_ago=1)
    alive()
    settings.CELERY_BROKER_URL = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < 3.5
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"].startswith("broker unreachable") and checks["worker"] == "ok"
    assert "hunter2" not in response.content.decode()


def test_redis_down_is_a_503_naming_the_broker_within_seconds(db, client, settings):
    beat_ran(seconds_ago=1)
    settings.CELERY_BROKER_URL = settings.DRIP_RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < 3.5
    checks = response.json()["checks"]
    assert response.status_code == 503 and checks["database"] == "ok" and checks["beat"] == "ok"
    assert checks["broker"].startswith("broker unreachable")
    assert checks["worker"].startswith("no worker heartbeat")  # read from the database, which answers


def test_an_amqp_broker_url_is_checked_too(db, settings):
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    started = time.monotonic()
    assert health.check_broker().startswith("broker unreachable")
    assert time.monotonic() - started < 3.5


def test_a_stale_beat_is_a_503_naming_beat(db, client):
    alive()
    beat_ran(seconds_ago=90)
    response = client.get("/healthz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["worker"] == "ok" and checks["broker"] == "ok"
    assert checks["beat"].startswith("beat's last dispatch was 9") and "is beat running?" in checks["beat"]


def test_beat_that_never_ran_or_is_disabled_is_a_503(db, client):
    alive()
    assert "beat has never run" in client.get("/healthz").json()["checks"]["beat"]
    task = beat_ran(seconds_ago=1)
    PeriodicTask.objects.filter(pk=task.pk).update(enabled=False)
    response = client.get("/healthz")
    assert response.status_code == 503 and "disabled" in response.json()["checks"]["beat"]


def test_healthz_needs_no_token(db, client, settings):
    settings.DRIP_API_TOKEN = "secret"
    settings.DRIP_METRICS_TOKEN = "other"
    alive()
    beat_ran(seconds_ago=1)
    assert client.get("/healthz").status_code == 200


# --- /metrics -----------------------------------------------------------------------------


def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def message(registration: Any, step: Step | None = None, **fields: Any) -> Message:
    data: dict[str, Any] = {"contact": registration.contact, "registration": registration, "step": step, "channel": Channel.EMAIL,
                            "template_type": "welcome", "status": Message.Status.SENT}
    data.update(fields)
    return Message.objects.create(**data)


def test_metrics_count_from_the_database(db, client, django_assert_max_num_queries):
    now = timezone.now()
    registration = enroll(make_contact(), make_event())
    steps = {s.key: s for s in registration.steps.all()}
    # Two reminders sent 2 s and 40 s after they were due, one old send outside the 24 h window.
    Step.objects.filter(pk=steps["reminder_24h"].pk).update(due_at=now - timedelta(seconds=100), status=Step.Status.DONE)
    Step.objects.filter(pk=steps["reminder_1h"].pk).update(due_at=now - timedelta(seconds=300), status=Step.Status.PENDING)
    Step.objects.filter(pk=steps["welcome"].pk).update(due_at=now - timedelta(days=2), status=Step.Status.DONE)
    late2 = message(registration, steps["reminder_24h"], template_type="reminder_24h", sent_at=now - timedelta(seconds=98))
    message(registration, steps["reminder_24h"], channel=Channel.SMS, template_type="reminder_24h",
            sent_at=now - timedelta(seconds=60), status=Message.Status.DELIVERED)
    message(registration, steps["welcome"], sent_at=now - timedelta(days=2))
    failed, klass = Message.Status.FAILED, Message.ErrorClass
    message(registration, channel=Channel.SMS, status=failed, error="twilio 21211: invalid number (permanent)",
            error_class=klass.PERMANENT)
    message(registration, status=failed, error="email provider unreachable: timeout (gave up after 5 attempts)",
            error_class=klass.GAVE_UP)
    message(registration, status=failed, error="worker lost during the provider call: outcome unknown, not resent",
            error_class=klass.OUTCOME_UNKNOWN)
    message(registration, status=failed, error="undelivered: 30003", error_class=klass.DELIVERY_REPORT)
    message(registration, status=failed, error="something odd")  # a row from before error_class: "other"
    for i, kind in enumerate(["delivered", "delivered", "opened"]):
        DeliveryReport.objects.create(message=late2, channel="email", kind=kind, occurred_at=now, provider="postmark", dedupe_key=f"k{i}")
    InboundSms.objects.create(from_number="+14155550100", body="STOP", kind=InboundSms.Kind.OPT_OUT)
    InboundSms.objects.create(from_number="+14155550100", body="hello", kind=InboundSms.Kind.OTHER)

    with django_assert_max_num_queries(8):
        samples = scrape(client)

    assert sample(samples, "drip_messages", channel="email", status="sent") == 2
    assert sample(samples, "drip_messages", channel="email", status="failed") == 4
    assert sample(samples, "drip_messages", channel="sms", status="delivered") == 1
    assert sample(samples, "drip_messages", channel="sms", status="bounced") == 0
    assert sample(samples, "drip_steps", status="done") == 2 and sample(samples, "drip_steps", status="pending") == 1
    assert sample(samples, "drip_steps", status="failed") == 0
    assert sample(samples, "drip_steps_overdue") == 1
    # Lateness: email 2 s late, sms 40 s late; the welcome of two days ago is outside the window.
    assert sample(samples, "drip_reminder_lateness_seconds_count", channel="email") == 1
    assert sample(samples, "drip_reminder_lateness_seconds_bucket", channel="email", le="1.0") == 0
    assert sample(samples, "drip_reminder_lateness_seconds_bucket", channel="email", le="5.0") == 1
    assert sample(samples, "drip_reminder_lateness_seconds_bucket", channel="sms", le="30.0") == 0
    assert sample(samples, "drip_reminder_lateness_seconds_bucket", channel="sms", le="60.0") == 1
    assert sample(samples, "drip_reminder_lateness_seconds_bucket", channel="sms", le="+Inf") == 1
    assert sample(samples, "drip_reminder_lateness_seconds_sum", channel="email") == pytest.approx(2, abs=0.01)
    assert sample(samples, "drip_reminder_lateness_seconds_sum", channel="sms") == pytest.approx(40, abs=0.01)
    assert sample(samples, "drip_provider_errors", channel="sms", **{"class": "permanent"}) == 1
    assert sample(samples, "drip_provider_errors", channel="email", **{"class": "gave_up"}) == 1
    assert sample(samples, "drip_provider_errors", channel="email", **{"class": "outcome_unknown"}) == 1
    assert sample(samples, "drip_provider_errors", channel="email", **{"class": "delivery_report"}) == 1
    assert sample(samples, "drip_provider_errors", channel="email", **{"class": "other"}) == 1
    assert sample(samples, "drip_provider_errors", channel="email", **{"class": "permanent"}) == 0
    assert sample(samples, "drip_delivery_reports_total", channel="email", kind="delivered") == 2
    assert sample(samples, "drip_delivery_reports_total", channel="email", kind="opened") == 1
    assert sample(samples, "drip_inbound_sms_total", kind="opt_out") == 1
    assert sample(samples, "drip_inbound_sms_total", kind="other") == 1
    assert sample(samples, "drip_inbound_sms_total", kind="help") == 0


def test_metrics_query_count_does_not_grow(db, client, django_assert_max_num_queries):
    registration = enroll(make_contact(), make_event())
    for n in range(60):
        message(registration, status=Message.Status.FAILED, error=f"boom {n} (permanent)", error_class=Message.ErrorClass.PERMANENT)
    with django_assert_max_num_queries(8):
        samples = scrape(client)
    assert sample(samples, "drip_provider_errors", channel="email", **{"class": "permanent"}) == 60


def test_metrics_without_a_token_answer_only_loopback_under_debug(db, client, settings):
    settings.DRIP_METRICS_TOKEN = ""
    settings.DEBUG = True
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403 and b"DRIP_METRICS_TOKEN" in response.content


def test_metrics_without_debug_need_the_token_even_from_loopback(db, client, settings):
    # Behind a proxy every client is loopback: the address proves nothing in production.
    settings.DRIP_METRICS_TOKEN = ""
    settings.DEBUG = False
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 403 and b"DRIP_METRICS_TOKEN" in response.content


def test_metrics_with_a_token_need_it_from_everyone(db, client, settings):
    settings.DRIP_METRICS_TOKEN = "m3trics"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", REMOTE_ADDR="203.0.113.9", headers={"Authorization": "Bearer m3trics"})
    assert ok.status_code == 200 and b"drip_messages" in ok.content
