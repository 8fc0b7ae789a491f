"""The figures producers meet: everything starts with `POST /api/events` on the Procfile's
`web` (gunicorn, 2 workers), and ends when the provider stub receives the message.

- enrollments accepted per second, lists of 200 and of 1,000;
- welcome emails accepted by the stub, from the first POST to the last welcome, against the
  no-op task of the same run;
- reminders due at one instant (1,000 and 10,000): lateness of each message (stub receipt
  minus the step's due time), and where it goes, stage by stage, from the rows' timestamps.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from bench.worker import machine_cpu_seconds, process_cpu_seconds

TOKEN = "bench-api-token"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class CpuSplit:
    """CPU seconds per named group of processes over a window, and the rest of the machine
    (PostgreSQL and Redis, and whatever else runs on it: other engineers' tests too)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        busy, _ = machine_cpu_seconds()
        return {"machine": busy} | {name: process_cpu_seconds(pids) for name, pids in self.groups.items()}

    def stop(self, units: int, unit: str) -> dict[str, Any]:
        end = self._read()
        used = {name: end[name] - self.start[name] for name in end}
        used["rest"] = max(0.0, used["machine"] - sum(v for k, v in used.items() if k != "machine"))
        per = {f"{name}_ms_per_{unit}": round(1000 * v / units, 2) for name, v in used.items() if name != "machine"}
        return {"cpu_s": {k: round(v, 2) for k, v in used.items()}} | per | {"loadavg_after": loadavg()}


def enrollments(tag: str, starts_at: datetime, size: int, offset: int = 0) -> list[dict[str, Any]]:
    """One list: every item a new contact and registration of the event `tag`-event, with a
    valid mobile number and both consents granted."""
    return [
        {"name": "event.enrolled", "data": {
            "contactId": f"{tag}-c{i}", "eventId": f"{tag}-event", "registrationId": f"{tag}-r{i}",
            "eventTitle": "Bench webinar", "scheduledAt": starts_at.isoformat(), "contactEmail": f"{tag}-{i}@example.com",
            "contactPhone": f"+1415{555 + i // 10000:03d}{i % 10000:04d}", "firstName": "Bench", "lastName": f"Person {i}",
            "timezone": "America/New_York", "joinUrl": "https://example.com/join", "emailConsent": True, "smsConsent": True,
        }}
        for i in range(offset, offset + size)
    ]


class Producer:
    """POSTs JSON bodies to the API from `concurrency` threads, a keep-alive session each."""

    def __init__(self, base_url: str, concurrency: int = 2) -> None:
        self.url = base_url + "/api/events"
        self.concurrency = concurrency
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers.update({"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        return self._local.session

    def _post(self, body: bytes) -> float:
        began = time.perf_counter()
        response = self._session().post(self.url, data=body, timeout=120)
        if response.status_code != 202:
            raise RuntimeError(f"POST /api/events answered {response.status_code}: {response.text[:300]}")
        return time.perf_counter() - began

    def post_all(self, bodies: list[bytes]) -> tuple[float, list[float]]:
        """(seconds from the first request to the last answer, seconds per request)."""
        began = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            latencies = list(pool.map(self._post, bodies))
        return time.perf_counter() - began, latencies


def measure_enrollment(producer: Producer, size: int, lists: int, cpu: Callable[[], CpuSplit]) -> dict[str, Any]:
    """`lists` lists of `size` new enrollments (an event each), from `producer.concurrency`
    producers at once; the first list of each size only warms up and is not counted."""
    starts_at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    stamp = time.time_ns()
    producer.post_all([json.dumps(enrollments(f"warm{size}-{stamp}", starts_at, size)).encode()])
    bodies = [json.dumps(enrollments(f"e{size}-{n}-{stamp}", starts_at, size)).encode() for n in range(lists)]
    meter = cpu()
    seconds, latencies = producer.post_all(bodies)
    split = meter.stop(size * lists, "enrollment")
    return {
        "list_size": size, "lists": lists, "producers": producer.concurrency, "seconds": round(seconds, 3),
        "per_second": round(size * lists / seconds), "list_ms_median": round(statistics.median(latencies) * 1000),
        "list_ms_max": round(max(latencies) * 1000), "cpu": split,
    }


def measure_welcome(producer: Producer, stub, n: int, size: int, timeout: float, cpu: Callable[[], CpuSplit]) -> dict[str, Any]:
    """n enrollments in lists of `size`: seconds from the first POST to the stub's receipt of
    the last welcome email."""
    stub.reset()
    starts_at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    stamp = time.time_ns()
    bodies = [json.dumps(enrollments(f"w{stamp}", starts_at, size, offset)).encode() for offset in range(0, n, size)]
    meter = cpu()
    began = time.time()
    posted, _ = producer.post_all(bodies)
    complete = stub.wait_for(n, timeout)
    split = meter.stop(n, "message")
    receipts = stub.receipts()
    last = max((r.at for r in receipts), default=began)
    seconds = last - began
    return {
        "enrollments": n, "list_size": size, "received": len(receipts), "complete": complete,
        "posting_seconds": round(posted, 3), "seconds": round(seconds, 3),
        "per_second": round(len(receipts) / seconds, 1) if seconds > 0 else None,
        "first_welcome_s": round(min(r.at for r in receipts) - began, 3) if receipts else None, "cpu": split,
    }


def measure_reminders(producer: Producer, stub, n: int, lead: float, timeout: float, cpu: Callable[[], CpuSplit]) -> dict[str, Any]:
    """n registrations enrolled through the API for an event starting at due + 1 h, so that
    every `reminder_1h` (email + SMS) comes due at the same instant, `lead` seconds after the
    first POST (time for the enrollments and their welcomes, which go out at once, to be
    over). Lateness of a message = its stub receipt - due."""
    from drip.models import Message, Step

    stub.reset()
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=lead)
    stamp = time.time_ns()
    size = 1000
    bodies = [json.dumps(enrollments(f"m{stamp}", due + timedelta(hours=1), min(size, n - o), o)).encode() for o in range(0, n, size)]
    posted, _ = producer.post_all(bodies)
    welcomes_done = stub.wait_for(n, max(1.0, due.timestamp() - time.time()))
    welcomes_done_at = max((r.at for r in stub.receipts()), default=time.time())
    meter = cpu()
    complete = stub.wait_for(3 * n, max(1.0, due.timestamp() - time.time()) + timeout)
    split = meter.stop(2 * n, "message")
    # The reminder email is the second email to an address (the welcome is the first); every
    # SMS is a reminder.
    emails: dict[str, list[float]] = defaultdict(list)
    late: dict[str, list[float]] = {"email": [], "sms": []}
    for r in stub.receipts():
        if r.kind == "email":
            emails[r.to].append(r.at)
        else:
            late["sms"].append(r.at - due.timestamp())
    late["email"] = [sorted(times)[1] - due.timestamp() for times in emails.values() if len(times) > 1]
    every = late["email"] + late["sms"]
    result: dict[str, Any] = {
        "reminders": n, "messages": 2 * n, "received": len(every), "complete": complete, "lead_seconds": lead,
        "posting_seconds": round(posted, 2), "welcomes_done_before_due": welcomes_done,
        "welcomes_done_s_before_due": round(due.timestamp() - welcomes_done_at, 2), "cpu": split,
    }
    if every:
        result |= {"first_ms": round(min(every) * 1000), "p50_ms": round(percentile(every, 50) * 1000),
                   "p99_ms": round(percentile(every, 99) * 1000), "max_ms": round(max(every) * 1000),
                   "early": sum(1 for x in every if x < 0), "messages_per_second": round(len(every) / max(every), 1)}
        result["by_channel"] = {k: {"p50_ms": round(percentile(v, 50) * 1000), "p99_ms": round(percentile(v, 99) * 1000)}
                                for k, v in late.items() if v}
    time.sleep(0.5)  # the worker writes "sent" right after the provider answers
    steps = Step.objects.filter(key="reminder_1h", registration__event__external_id=f"m{stamp}-event")
    messages = Message.objects.filter(step__in=steps)
    result["stages"] = stages(due, steps, messages)
    return result


def stages(due: datetime, steps, messages) -> dict[str, Any]:
    """Where a reminder's lateness goes, from the rows' own timestamps, as seconds after the
    due time (first / p50 / p99 / max over the rows): the step batch claims its steps (ETA
    timer, the steps queue; run_steps stamps started_at and finished_at with one clock
    reading), its messages are inserted (load, checks, rendering of nothing yet: created_at),
    the send loop records "sending" right before the provider call (the messages queue,
    prefetch, the batches and messages before it), the provider answered (sent_at)."""
    def spread(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {"first": round(min(values), 3), "p50": round(percentile(values, 50), 3),
                "p99": round(percentile(values, 99), 3), "max": round(max(values), 3)}

    t0 = due.timestamp()
    step_rows = list(steps.values_list("enqueued_at", "started_at", "finished_at"))
    message_rows = list(messages.values_list("created_at", "sending_at", "sent_at"))

    def column(rows: list[tuple], i: int) -> list[float]:
        return [row[i].timestamp() - t0 for row in rows if row[i] is not None]

    waits = [(s.timestamp() - c.timestamp()) for c, s, _ in message_rows if c and s]
    sends = [(d.timestamp() - s.timestamp()) for _, s, d in message_rows if s and d]
    return {
        "steps": len(step_rows), "messages": len(message_rows),
        "step_claimed_by_dispatcher": spread(column(step_rows, 0)),
        "step_task_started": spread(column(step_rows, 1)),
        "message_created": spread(column(message_rows, 0)),
        "provider_call_started": spread(column(message_rows, 1)),
        "sent": spread(column(message_rows, 2)),
        "created_to_provider_call": spread(waits),
        "provider_call": spread(sends),
    }
