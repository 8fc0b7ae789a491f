"""Health and metrics: `GET /healthz` for a load balancer or a monitor, `GET /metrics` for
Prometheus.

/healthz checks, each with a short timeout (the whole answer comes within ~3 s even when
Redis does not answer at all):
- database: `SELECT 1`;
- broker: a connection to CELERY_BROKER_URL through the Celery app (redis:// or amqp://);
- worker: a worker row (drip/timer/workers.py, the heartbeat failover reads too) seen within
  HEALTH_WINDOW and not stopped;
- beat: django-celery-beat's PeriodicTask "drip-dispatch-due-steps", whose `last_run_at`
  beat's DatabaseScheduler writes after every dispatch it sends (CELERY_BEAT_SYNC_EVERY=1).

Each process answers /healthz from one run of the checks at most DRIP_HEALTH_CACHE_SECONDS
old, made by one request while the others wait for it: a flood of /healthz (it needs no
token) costs the database and the broker one check per process every two seconds. Its body
names what failed and the error's class, never a host, user or password; the details go to
the log.

/metrics counts everything from the database at scrape time (a custom Collector, a handful
of aggregate queries), so the numbers are right however many worker processes there are.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from celery_app import app as celery_app
from drip.models import Channel, DeliveryReport, InboundSms, Message, Step, Worker
from drip.support.bearer import token_matches

log = logging.getLogger("drip.health")

HEALTH_WINDOW = 60  # seconds: a heartbeat or a beat dispatch older than this is a failure
BROKER_TIMEOUT = 2  # whole seconds (kombu's ensure_connection)
DISPATCH_TASK_NAME = "drip-dispatch-due-steps"  # celery_app._beat_schedule
OK = "ok"


# --- the checks ---------------------------------------------------------------------------

_CREDENTIALS = re.compile(r"(\w+://)[^@/\s]*@")


def _why(exc: BaseException, check: str) -> str:
    """An error for a public page: its class only (a driver's text names the host, port and
    user: "connection to server at db.internal failed for user drip"). The text goes to the
    log, any URL credentials cut out."""
    text = _CREDENTIALS.sub(r"\1***@", str(exc)).strip()
    log.warning("healthz: %s check failed: %s: %s", check, type(exc).__name__, text[:500])
    return type(exc).__name__


def check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"database unreachable ({_why(exc, 'database')})"
    return OK


def check_broker() -> str:
    conn = celery_app.connection_for_write(url=settings.CELERY_BROKER_URL, connect_timeout=BROKER_TIMEOUT)
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=1, timeout=BROKER_TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        return f"broker unreachable ({_why(exc, 'broker')})"
    finally:
        conn.release()
    return OK


def check_worker() -> str:
    """Any worker process that wrote its heartbeat row lately (drip/timer/workers.py): the one
    heartbeat failover also reads, on the database's clock."""
    try:
        alive = Worker.objects.filter(stopped_at__isnull=True, seen_at__gte=Now() - timedelta(seconds=HEALTH_WINDOW)).exists()
    except Exception as exc:  # noqa: BLE001
        return f"cannot read the workers' heartbeats ({_why(exc, 'worker')})"
    if not alive:
        return f"no worker heartbeat in the last {HEALTH_WINDOW} s: is a worker running?"
    return OK


def check_beat(now: datetime | None = None) -> str:
    from django_celery_beat.models import PeriodicTask

    now = now or timezone.now()
    try:
        row = PeriodicTask.objects.filter(name=DISPATCH_TASK_NAME).values("enabled", "last_run_at").first()
    except Exception as exc:  # noqa: BLE001
        return f"cannot read beat's schedule ({_why(exc, 'beat')})"
    if row is None:
        return f"beat has never run: no periodic task {DISPATCH_TASK_NAME!r} (start beat with the DatabaseScheduler)"
    if not row["enabled"]:
        return f"the periodic task {DISPATCH_TASK_NAME!r} is disabled: no step is dispatched"
    last: datetime | None = row["last_run_at"]
    if last is None:
        return "beat has not dispatched yet"
    if timezone.is_naive(last):
        last = timezone.make_aware(last, UTC)
    age = (now - last).total_seconds()
    if age > HEALTH_WINDOW:
        return f"beat's last dispatch was {int(age)} s ago (at {last.astimezone(UTC).isoformat()}): is beat running?"
    return OK


# The broker is asked in a thread of its own, bounded by its timeout; the database checks
# run in the request's thread (its connection, and a test's transaction).
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="drip-health")


def run_checks() -> dict[str, str]:
    broker = _pool.submit(check_broker)
    checks = {"database": check_database()}
    try:
        checks["broker"] = broker.result(timeout=BROKER_TIMEOUT + 1)
    except Exception as exc:  # noqa: BLE001 - a timeout included
        checks["broker"] = f"no answer in time ({_why(exc, 'broker')})"
    reachable = checks["database"] == OK
    checks["worker"] = check_worker() if reachable else "unknown: the database is unreachable"
    checks["beat"] = check_beat() if reachable else "unknown: the database is unreachable"
    return {name: checks[name] for name in ("database", "broker", "worker", "beat")}


_cached: tuple[float, dict[str, str]] | None = None
_cache_lock = threading.Lock()


def recent_checks() -> dict[str, str]:
    """The checks' result, run again only when the last one is DRIP_HEALTH_CACHE_SECONDS old.
    One request runs them while the others wait on the lock, then share its result."""
    global _cached
    with _cache_lock:
        if _cached is not None and time.monotonic() - _cached[0] < settings.DRIP_HEALTH_CACHE_SECONDS:
            return _cached[1]
        started = time.monotonic()  # the result's age counts from before the checks ran
        checks = run_checks()
        _cached = (started, checks)
        return checks


def forget_checks() -> None:
    global _cached
    with _cache_lock:
        _cached = None


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = recent_checks()
    healthy = all(value == OK for value in checks.values())
    response = JsonResponse({"status": OK if healthy else "fail", "checks": checks}, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response


# --- metrics ------------------------------------------------------------------------------

OVERDUE_AFTER = timedelta(seconds=60)
LATENESS_WINDOW = timedelta(hours=24)
LATENESS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _count_by(queryset: Any, *fields: str) -> dict[tuple[str, ...], int]:
    return {tuple(str(row[f]) for f in fields): row["n"] for row in queryset.values(*fields).annotate(n=Count("id")).order_by()}


class DripCollector(Collector):
    """Everything counted from the database when Prometheus scrapes."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        channels = [c.value for c in Channel]

        messages = GaugeMetricFamily("drip_messages", "Messages by channel and status.", labels=["channel", "status"])
        by_status = _count_by(Message.objects.all(), "channel", "status")
        for channel in channels:
            for status in Message.Status:
                messages.add_metric([channel, status.value], by_status.get((channel, status.value), 0))
        yield messages

        steps = GaugeMetricFamily("drip_steps", "Funnel steps by status.", labels=["status"])
        step_counts = _count_by(Step.objects.all(), "status")
        for step_status in Step.Status:
            steps.add_metric([step_status.value], step_counts.get((step_status.value,), 0))
        yield steps

        overdue = Step.objects.filter(status__in=Step.OPEN, due_at__lt=now - OVERDUE_AFTER).count()
        yield GaugeMetricFamily(
            "drip_steps_overdue", f"Steps pending or enqueued more than {int(OVERDUE_AFTER.total_seconds())} s past due.",
            value=overdue,
        )

        yield self._lateness(now, channels)

        errors = GaugeMetricFamily(
            "drip_provider_errors", "Failed messages by channel and error class.", labels=["channel", "class"]
        )
        error_counts = _count_by(Message.objects.filter(status=Message.Status.FAILED), "channel", "error_class")
        for channel in channels:
            for name in [*Message.ErrorClass.values, ""]:
                errors.add_metric([channel, name or "other"], error_counts.get((channel, name), 0))
        yield errors

        reports = CounterMetricFamily(
            "drip_delivery_reports", "Delivery reports received from providers, by channel and kind.", labels=["channel", "kind"]
        )
        for (channel, kind), n in sorted(_count_by(DeliveryReport.objects.all(), "channel", "kind").items()):
            reports.add_metric([channel, kind], n)
        yield reports

        inbound = CounterMetricFamily("drip_inbound_sms", "Inbound SMS received, by kind.", labels=["kind"])
        inbound_counts = _count_by(InboundSms.objects.all(), "kind")
        for sms_kind in InboundSms.Kind:
            inbound.add_metric([sms_kind.value], inbound_counts.get((sms_kind.value,), 0))
        yield inbound

    def _lateness(self, now: datetime, channels: list[str]) -> HistogramMetricFamily:
        """sent_at − the step's due_at, for step messages sent in the last 24 h: one query of
        conditional counts, whatever the number of messages."""
        lateness = ExpressionWrapper(F("sent_at") - F("step__due_at"), output_field=DurationField())
        aggregates: dict[str, Any] = {
            f"le_{i}": Count("id", filter=Q(lateness__lte=timedelta(seconds=bound))) for i, bound in enumerate(LATENESS_BUCKETS)
        }
        rows = (
            Message.objects.filter(step__isnull=False, sent_at__isnull=False, sent_at__gte=now - LATENESS_WINDOW)
            .annotate(lateness=lateness).values("channel")
            .annotate(total=Count("id"), seconds=Sum("lateness"), **aggregates).order_by()
        )
        family = HistogramMetricFamily(
            "drip_reminder_lateness_seconds",
            "How late funnel messages reached the provider (sent_at - step due_at), messages sent in the last 24 h.",
            labels=["channel"],
        )
        found: dict[str, dict[str, Any]] = {str(r["channel"]): dict(r) for r in rows}
        for channel in channels:
            row: dict[str, Any] = found.get(channel, {})
            buckets: list[tuple[str, float]] = [(str(bound), float(row.get(f"le_{i}", 0))) for i, bound in enumerate(LATENESS_BUCKETS)]
            buckets.append(("+Inf", float(row.get("total", 0))))
            total: timedelta | None = row.get("seconds")
            family.add_metric([channel], buckets, sum_value=total.total_seconds() if total is not None else 0.0)
        return family


def client_is_loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.DRIP_METRICS_TOKEN
    if not token and not settings.DEBUG:
        # Behind a proxy every client is loopback: without DEBUG the address proves nothing.
        return HttpResponse("/metrics is disabled: set DRIP_METRICS_TOKEN to enable it\n",
                            status=403, content_type="text/plain")
    if token and not token_matches(request, token):
        response = HttpResponse("missing or wrong bearer token (Authorization: Bearer $DRIP_METRICS_TOKEN)\n",
                                status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="drip-metrics"'
        return response
    if not token and not client_is_loopback(request):
        return HttpResponse("/metrics answers only loopback clients while DRIP_METRICS_TOKEN is unset\n",
                            status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DripCollector())
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
