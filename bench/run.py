"""The benchmark: `make bench` (scripts/bench.sh) or `python -m bench.run`.

Real stack: PostgreSQL, its own Redis, a real `celery worker` (prefork, concurrency 2), the
real anymail Postmark backend and twilio client talking HTTP to a loopback stub. Prints a
table and writes bench/results.json. bench/README.md says what each figure means.

Order matters for time and for clean memory readings: the in-process figures (queries,
10k fan-out) come first, then one worker serves the no-op, dispatch, lateness and memory
figures (the 100k fan-out is timed inside the memory phase, whose steps it provides).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import producer
from bench.stub import BenchStub
from bench.worker import CpuMeter, Ticker, Worker, wait_http, web

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
# The figures main() can run on their own (--only); the no-op reference runs with dispatch.
PHASES = {"queries", "fan_out", "dispatch", "api", "slow", "lateness", "memory"}
STARTED = time.monotonic()
LOAD_AT_START = producer.loadavg()  # other work on the machine moves every figure
# make bench must finish in 15 minutes; every wait below is cut to what is left of this. (At
# 9 minutes the 10,000-reminder row left no time for the slow provider's rows.)
BUDGET_SECONDS = float(os.environ.get("BENCH_BUDGET_SECONDS", "840"))

GOALS = {
    # From the producer's request (bench/producer.py).
    "enroll_200_per_second": 1000,
    "enroll_1000_per_second": 2000,
    "welcome_ratio": 1.0,  # welcome emails per second / no-op tasks per second
    "reminders_1k_first_ms": 300,
    "reminders_1k_p50_ms": 1000,
    "reminders_1k_p99_ms": 1500,
    "reminders_10k_p99_ms": 10_000,
    "slow_provider_per_second": 2000,
    "fan_out_per_second": 20_000,
    "dispatch_ratio": 0.5,
    "memory_delta_mb": 5.0,
    "queries_per_message": 8,
}


def remaining(reserve: float = 0) -> float:
    return max(0.0, BUDGET_SECONDS - (time.monotonic() - STARTED) - reserve)


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- environment ------------------------------------------------------------------------

def configure_environment(stub: BenchStub) -> dict[str, str]:
    """Production settings (DEBUG off) with the providers pointed at the stub. Set before
    Django loads, and handed as-is to the worker."""
    defaults = {
        "SECRET_KEY": "bench-only-not-secret",
        # Only how often the ticker sends dispatch_due_steps; steps inside the enqueue
        # horizon are claimed ahead of their due time whatever it is.
        "DRIP_DISPATCH_INTERVAL": "1",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "drip.settings",
        # Production settings: DEBUG would keep every query in worker memory, and a time
        # scale would pull the post-event steps into the enqueue horizon.
        "DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",  # the web process listens on loopback, plain http
        "DRIP_TIME_SCALE": "1",
        # The figures must not depend on the hour: the dispatch world's reengagement SMS are
        # marketing, and inside the contacts' quiet hours they would wait for the morning.
        "DRIP_SMS_QUIET_HOURS": "off",
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
        "ANYMAIL_POSTMARK_SERVER_TOKEN": "bench-server-token",
        "ANYMAIL_POSTMARK_API_URL": stub.url + "/",
        "SMS_BACKEND": "twilio",
        "TWILIO_ACCOUNT_SID": "ACbench",
        "TWILIO_AUTH_TOKEN": "bench-auth-token",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": stub.url,
        "DRIP_API_TOKEN": producer.TOKEN,
        "ALLOWED_HOSTS": "127.0.0.1",
    })
    worker_env = dict(os.environ)
    # The worker logs as in production (a line per step and message, to bench/logs/);
    # this process only says what it is doing.
    worker_env["DRIP_LOG_LEVEL"] = os.environ.get("DRIP_LOG_LEVEL", "INFO")
    os.environ["DRIP_LOG_LEVEL"] = "WARNING"
    return worker_env


def require_own_redis() -> None:
    if os.environ.get("BENCH_REDIS_OWNED") != "1":
        sys.exit("bench: flushes its Redis between phases, so it runs only on one it started itself: "
                 "use `make bench` (or set BENCH_REDIS_OWNED=1 with REDIS_URL pointing at a Redis of your own).")


def reset_broker() -> None:
    """Empty the bench's own Redis, then leave the reconciler's broker mark in place so the
    next reconcile does not take the flush for a broker reset."""
    import redis
    from django.conf import settings

    from drip.timer.scheduler import broker_was_reset

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    broker_was_reset()


def broker_backlog() -> dict[str, int]:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return {
        "queued_steps": client.llen("steps"), "queued_messages": client.llen("messages"),
        "unacked": client.hlen("unacked"), "redis_used_memory_kb": client.info("memory")["used_memory"] // 1024,
    }


class QueryCounter:
    """Counts queries without keeping their SQL (a 1,000-row INSERT is a big string)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0  # spent in the database driver: sending, waiting, receiving

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started


# --- figures measured in this process ---------------------------------------------------

def measure_queries(stub: BenchStub) -> dict:
    """Queries per sent message, in-process against the stub, through the functions the
    worker runs and in the batches it would get: n steps due at once (n = 1, 10, 100) run
    by run_steps, then their messages sent by send_messages. Counted for the send task alone
    and for the whole path (step task + send task). The SQL of a lone send is kept."""
    from celery.utils.functional import chunks
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from bench import world
    from drip.delivery.sender import send_batch as send_messages
    from drip.engine.steps import run_step_batch as run_steps
    from drip.models import Message, Step

    world.wipe()
    now = timezone.now()
    event = world.make_event("queries", completed_at=now - timedelta(hours=2))
    contacts = world.make_contacts("queries", 222)
    registrations = world.make_registrations("queries", event, contacts, attended=False)
    # sorry_missed: one email per step; reengagement: an email and an SMS per step.
    kinds = {"email": ("sorry_missed", registrations[:111]), "email+sms": ("reengagement", registrations[111:])}
    result: dict = {"send": {}, "path": {}}
    for label, (key, regs) in kinds.items():
        steps = world.insert_steps(event, regs, key, now - timedelta(seconds=1), Step.Status.ENQUEUED)
        offset = 0
        for n in (1, 10, 100):
            batch, offset = [s.pk for s in steps[offset:offset + n]], offset + n
            started = time.perf_counter()
            with CaptureQueriesContext(connection) as step_queries:
                for ids in chunks(iter(batch), settings.DRIP_STEP_BATCH):
                    run_steps(ids)
            mids = list(Message.objects.filter(step__in=batch, status=Message.Status.QUEUED).order_by("id").values_list("id", flat=True))
            with CaptureQueriesContext(connection) as send_queries:
                for ids in chunks(iter(mids), settings.DRIP_SEND_BATCH):
                    send_messages(ids)
            elapsed = time.perf_counter() - started
            sent = Message.objects.filter(id__in=mids, status=Message.Status.SENT).count()
            entry: dict[str, Any] = {"steps": n, "messages": len(mids), "sent": sent, "step_queries": len(step_queries),
                     "send_queries": len(send_queries),
                     "ms_per_message_in_process": round(elapsed / max(1, len(mids)) * 1000, 2)}
            result["send"][f"{label}_{n}"] = round(len(send_queries) / max(1, sent), 2)
            result["path"][f"{label}_{n}"] = round((len(step_queries) + len(send_queries)) / max(1, sent), 2)
            result[f"{label}_{n}"] = entry
            if n == 1 and label == "email":
                entry["sql"] = [q["sql"][:300] for q in step_queries.captured_queries + send_queries.captured_queries]
    sizes = [f"{label}_{n}" for label in kinds for n in (1, 10, 100)]
    result["max_send_per_message"] = max(result["send"].values())
    # Constant: a larger batch never costs more per message than a smaller one.
    result["constant"] = all(
        result[kind][f"{label}_{a}"] >= result[kind][f"{label}_{b}"]
        for kind in ("send", "path") for label in kinds for a, b in ((1, 10), (10, 100))
    )
    result["ok"] = result["constant"] and result["max_send_per_message"] <= GOALS["queries_per_message"]
    result["all_sent"] = all(result[size]["sent"] == result[size]["messages"] for size in sizes)
    result["pg_connect_ms"] = measure_pg_connect()
    reset_broker()  # run_steps enqueued send tasks; no worker was there to take them
    world.wipe()
    return result


def measure_pg_connect(rounds: int = 20) -> float:
    """What opening a PostgreSQL connection costs: Celery's Django fixup closes the
    connection before and after every task, so with CONN_MAX_AGE=0 every task pays it."""
    from django.db import connection

    timings = []
    for _ in range(rounds):
        connection.close()
        started = time.perf_counter()
        connection.ensure_connection()
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings) * 1000, 2)


def measure_fan_out(n: int, worker_ticker=None) -> dict:
    """Seconds for complete_event to plan the post-event funnel of n registrations (half
    attended, half not), counted from the call to its return (committed)."""
    from django.db import connection
    from django.utils import timezone

    from bench import world
    from drip.engine.services import complete_event
    from drip.models import Step

    world.wipe()
    event = world.make_event(f"fanout{n}", starts_in=timedelta(hours=-2))
    contacts = world.make_contacts(f"fanout{n}", n, consent=False)
    registrations = world.make_registrations(f"fanout{n}", event, contacts)
    attended = set(registrations[::2])
    world.analyze()
    counter = QueryCounter()
    if worker_ticker:
        worker_ticker.pause()
    started = time.perf_counter()
    with connection.execute_wrapper(counter):
        summary = complete_event(event, attended=attended, completed_at=timezone.now())
    seconds = time.perf_counter() - started
    if worker_ticker:
        worker_ticker.resume()
    rows = Step.objects.filter(registration__event=event, funnel="post_event").count()
    per_second = n / seconds
    return {
        "registrations": n, "seconds": round(seconds, 3), "registrations_per_second": round(per_second),
        "steps_inserted": rows, "steps_planned": summary.steps_planned, "queries": counter.count,
        "seconds_in_database": round(counter.seconds, 3), "seconds_in_python": round(seconds - counter.seconds, 3),
        "branches": summary.branches, "goal_per_second": GOALS["fan_out_per_second"],
        "ok": per_second >= GOALS["fan_out_per_second"] and rows == 3 * n,
    }


# --- figures that need the worker -------------------------------------------------------

def measure_noop(app, n: int = 5000, worker=None) -> dict:
    """The reference: n no-op tasks through the same worker, from the first publish to the
    last one run."""
    import redis
    from django.conf import settings

    from bench.celery_bench import NOOP_COUNT, NOOP_FIRST, NOOP_LAST

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(NOOP_COUNT, NOOP_FIRST, NOOP_LAST)
    cpu = CpuMeter(worker) if worker else None
    started = time.time()
    for _ in range(n):
        app.send_task("bench.noop")
    published = time.time() - started
    deadline = time.monotonic() + min(120, remaining(reserve=200))
    while time.monotonic() < deadline and int(client.get(NOOP_COUNT) or 0) < n:
        time.sleep(0.02)
    done = int(client.get(NOOP_COUNT) or 0)
    last = float(client.get(NOOP_LAST) or started)
    seconds = last - started
    result: dict[str, Any] = {"tasks": n, "ran": done, "seconds": round(seconds, 3), "publish_seconds": round(published, 3),
              "tasks_per_second": round(done / seconds, 1) if seconds > 0 else None, "complete": done == n}
    if cpu:
        # The publishing loop runs in this process: its CPU is the bench's, not the worker's.
        usage = cpu.stop(n)
        result["cpu"] = {"machine_busy_percent": usage["machine_busy_percent"], "worker_cpu_s": usage["worker_cpu_s"],
                         "worker_cpu_ms_per_task": usage["worker_cpu_ms_per_message"]}
    return result


def dispatch_world(tag: str, n_messages: int, emails_only: bool = False) -> tuple:
    """Contacts with consent on a completed event, no-show branch: half of the messages from
    `sorry_missed` steps (email), half from `reengagement` (email + SMS), i.e. the first two
    steps of that branch; or, `emails_only`, all from `sorry_missed`. Returns (event,
    registration ids per key)."""
    from django.utils import timezone

    from bench import world

    email_only = n_messages if emails_only else n_messages // 2
    both = (n_messages - email_only) // 2
    event = world.make_event(tag, completed_at=timezone.now() - timedelta(hours=2))
    contacts = world.make_contacts(tag, email_only + both)
    registrations = world.make_registrations(tag, event, contacts, attended=False)
    return event, {"sorry_missed": registrations[:email_only], "reengagement": registrations[email_only:]}


def measure_dispatch(stub: BenchStub, worker, n_messages: int, lead: float, emails_only: bool = False) -> dict:
    """n_messages from "due" to "accepted by the stub". The steps are inserted pending, due
    `lead` seconds from now; the ticker's dispatch_due_steps claims them (they are inside the
    enqueue horizon) and the worker runs them when due, as in production. With lead=0 they
    are already due when first seen (a backlog after downtime)."""
    from django.utils import timezone

    from bench import world
    from drip.models import Message, Step

    world.wipe()
    stub.reset()
    event, groups = dispatch_world(f"dispatch{int(lead)}", n_messages, emails_only)
    world.analyze()
    due = timezone.now() + timedelta(seconds=lead)
    for key, registration_ids in groups.items():
        world.insert_steps(event, registration_ids, key, due)
    t_due = due.timestamp()
    cpu = CpuMeter(worker)
    time.sleep(max(0.0, t_due - time.time()))
    cpu.mark_window()
    finished = stub.wait_for(n_messages, timeout=lead + min(240, remaining(reserve=150)))
    cpu_use = cpu.stop(n_messages)
    receipts = stub.receipts()
    last = max((r.at for r in receipts), default=t_due)
    seconds = last - t_due
    time.sleep(0.5)  # the worker writes "sent" right after the provider answers
    times = sorted(r.at - t_due for r in receipts)
    steps = Step.objects.filter(registration__event=event)
    stages = {
        "all_steps_claimed_s": _since(t_due, steps.order_by("-enqueued_at").values_list("enqueued_at", flat=True).first()),
        "all_steps_done_s": _since(t_due, steps.order_by("-finished_at").values_list("finished_at", flat=True).first()),
        "first_receipt_s": round(times[0], 3) if times else None,
        "half_receipts_s": round(times[len(times) // 2], 3) if times else None,
    }
    duplicates = sum(c - 1 for c in Counter((r.kind, r.to) for r in receipts).values() if c > 1)
    return {
        "messages": n_messages, "received": len(receipts), "complete": finished, "lead_seconds": lead,
        "by_channel": dict(Counter(r.kind for r in receipts)), "duplicates": duplicates,
        "sent_in_db": Message.objects.filter(status=Message.Status.SENT, step__registration__event=event).count(),
        "seconds": round(seconds, 3), "messages_per_second": round(len(receipts) / seconds, 1) if seconds > 0 else None,
        "stages": stages, "cpu": cpu_use,
    }


def measure_slow_provider(app, stub: BenchStub, worker, worker_env: dict[str, str], n_messages: int, latency: float) -> dict:
    """The dispatch figure for emails, against a provider that takes `latency` seconds to
    answer, as a real one does: the prefork worker alone (its two processes wait on every
    answer), then with the Procfile's `sender_email` (a prefork worker for the email queues) beside it."""
    import socket

    from bench.worker import SENDER_ARGS

    stub.latency = latency
    sender = None
    try:
        alone = measure_dispatch(stub, worker, n_messages, lead=5, emails_only=True)
        sender = Worker("sender", worker_env, SENDER_ARGS)
        sender.wait_ready(app, hostname=f"sender@{socket.gethostname()}")
        with_sender = measure_dispatch(stub, worker, n_messages, lead=5, emails_only=True)
    finally:
        stub.latency = 0.0
        if sender:
            sender.stop()
    processes = SENDER_ARGS[SENDER_ARGS.index("--concurrency") + 1]
    return {
        "latency_ms": round(latency * 1000), "messages": n_messages, "sender_processes": int(processes),
        "worker_alone": {k: alone[k] for k in ("messages_per_second", "seconds", "received", "duplicates", "complete")},
        "with_sender": {k: with_sender[k] for k in ("messages_per_second", "seconds", "received", "duplicates", "complete")},
    }


def _since(t0: float, when: datetime | None) -> float | None:
    return round(when.timestamp() - t0, 3) if when else None


def measure_lateness(stub: BenchStub, n: int, spread: float) -> dict:
    """n `thank_you` steps (one email each) due within one minute: evenly spread over
    `spread` seconds, or all at the same instant (spread 0, e.g. every registration's
    reminder of a large event). Lateness = stub receipt time - step due_at."""
    from django.utils import timezone

    from bench import world

    world.wipe()
    stub.reset()
    event = world.make_event(f"late{int(spread)}", completed_at=timezone.now() - timedelta(hours=2))
    contacts = world.make_contacts(f"late{int(spread)}", n)
    registrations = world.make_registrations(f"late{int(spread)}", event, contacts, attended=True)
    world.analyze()
    start = timezone.now() + timedelta(seconds=5)
    dues = [start + timedelta(seconds=spread * i / n) for i in range(n)]
    world.insert_steps(event, registrations, "thank_you", dues)
    due_by_email = {f"late{int(spread)}-{i}@example.com": dues[i].timestamp() for i in range(n)}
    finished = stub.wait_for(n, timeout=5 + spread + min(90, remaining(reserve=120)))
    late = [r.at - due_by_email[r.to] for r in stub.receipts() if r.to in due_by_email]
    if not late:
        return {"steps": n, "received": 0, "complete": False}
    return {
        "steps": n, "spread_seconds": spread, "received": len(late), "complete": finished,
        "p50_ms": round(percentile(late, 50) * 1000, 1), "p99_ms": round(percentile(late, 99) * 1000, 1),
        "min_ms": round(min(late) * 1000, 1), "max_ms": round(max(late) * 1000, 1),
        "early": sum(1 for x in late if x < 0),
    }


def sample_memory(worker, samples: int = 3) -> dict:
    from bench.worker import memory

    readings = []
    for _ in range(samples):
        readings.append(memory(worker))
        time.sleep(0.5)
    last = readings[-1].as_dict()
    last["rss_kb"] = round(statistics.median(r.rss_kb for r in readings))
    last["pss_kb"] = round(statistics.median(r.pss_kb for r in readings))
    return last


def measure_memory(app, worker, ticker, far_steps: int, eta_tasks: int, settle: float) -> tuple[dict, dict]:
    """Worker memory with nothing pending, then with `far_steps` steps pending days ahead
    (planned by a 100k fan-out, which is timed on the way), then with `eta_tasks` plain
    ETA tasks 3 days ahead for comparison. Returns (memory figure, 100k fan-out figure)."""
    from django.db.models import Count

    from bench import world
    from drip.models import Step

    world.wipe()
    time.sleep(settle)  # dispatcher and reconciler ticks on an empty schedule
    empty = sample_memory(worker)
    empty["broker"] = broker_backlog()
    say(f"memory: nothing pending, worker RSS {empty['rss_kb']} kB; planning {far_steps:,} registrations")

    fan_out = measure_fan_out(far_steps, worker_ticker=ticker)
    say(f"fan-out {far_steps:,}: {fan_out['seconds']} s ({fan_out['registrations_per_second']:,}/s)")
    # Keep the last step of each branch (nurture +3 d, final_followup +7 d): one pending
    # step per registration, all days ahead.
    Step.objects.exclude(key__in=["nurture", "final_followup"]).delete()
    pending = dict(Step.objects.filter(status=Step.Status.PENDING).values_list("key").annotate(n=Count("id")))
    world.analyze()
    time.sleep(settle)  # the same ticks, now over a table with the far-future steps
    loaded = sample_memory(worker)
    loaded["broker"] = broker_backlog()
    loaded["pending_steps"] = pending
    delta_mb = (loaded["rss_kb"] - empty["rss_kb"]) / 1024
    say(f"memory: {sum(pending.values()):,} steps pending, worker RSS {loaded['rss_kb']} kB ({delta_mb:+.2f} MB)")

    eta = {"tasks": eta_tasks, "skipped": True}
    if remaining(reserve=60) > 60:
        eta = measure_eta_memory(app, worker, eta_tasks, loaded)
    result = {
        "far_steps_pending": sum(pending.values()), "settle_seconds": settle,
        "empty": empty, "with_far_steps": loaded,
        "rss_delta_mb": round(delta_mb, 2), "pss_delta_mb": round((loaded["pss_kb"] - empty["pss_kb"]) / 1024, 2),
        "goal_mb": GOALS["memory_delta_mb"], "ok": delta_mb < GOALS["memory_delta_mb"],
        "plain_eta": eta,
    }
    return result, fan_out


def measure_eta_memory(app, worker, n: int, before: dict) -> dict:
    """Plain ETA scheduling for comparison: n no-op tasks due in 3 days, sent straight to
    Celery. The worker takes every one into memory (ETA tasks bypass the prefetch limit)
    and holds it there unacknowledged until it is due."""

    eta = datetime.now(UTC) + timedelta(days=3)
    for _ in range(n):
        app.send_task("bench.noop", eta=eta)
    deadline = time.monotonic() + min(60, remaining(reserve=60))
    backlog = broker_backlog()
    while time.monotonic() < deadline and (backlog["queued_steps"] or backlog["unacked"] < n):
        time.sleep(0.25)
        backlog = broker_backlog()
    time.sleep(1)
    held = sample_memory(worker)
    held["broker"] = broker_backlog()
    delta_kb = held["rss_kb"] - before["rss_kb"]
    return {
        "tasks": n, "all_reserved_by_worker": backlog["unacked"] >= n and not backlog["queued_steps"],
        "rss_kb": held["rss_kb"], "rss_delta_mb": round(delta_kb / 1024, 2),
        "kb_per_task": round(delta_kb / n, 2),
        "redis_delta_kb": held["broker"]["redis_used_memory_kb"] - before["broker"]["redis_used_memory_kb"],
        "broker": held["broker"],
    }


# --- from the producer's request ------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wipe_retrying(attempts: int = 5) -> None:
    """world.wipe, again after a deadlock with a task the worker was finishing."""
    from django.db import OperationalError

    from bench import world

    for attempt in range(attempts):
        try:
            world.wipe()
            return
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)


def measure_from_requests(stub: BenchStub, worker, web_process, base_url: str, sizes: dict[str, Any]) -> dict:
    """The producer's figures (bench/producer.py), through gunicorn, the worker and the
    ticker, each phase on an empty database once the previous one's messages are out."""
    from bench import world

    def split() -> producer.CpuSplit:
        return producer.CpuSplit({"web": [web_process.pid, *web_process.pool_pids()],
                                  "worker": [worker.pid, *worker.pool_pids()], "bench": [os.getpid()]})

    def drained(expected: int) -> None:
        if not stub.wait_for(expected, min(90, remaining(reserve=200))):
            # The worker is still at it: take its queue away before emptying the tables under
            # it (a TRUNCATE against its writes can deadlock).
            say(f"  only {stub.count()} of {expected} messages out; dropping the rest")
            reset_broker()
            time.sleep(2)
        time.sleep(0.5)
        wipe_retrying()

    post = producer.Producer(base_url, concurrency=2)
    result: dict[str, Any] = {"enroll": []}
    world.wipe()
    stub.reset()
    posted = 0
    for size, lists in sizes["enroll"]:
        figure = producer.measure_enrollment(post, size, lists, split)
        posted += size * (lists + 1)
        figure["loadavg"] = producer.loadavg()
        result["enroll"].append(figure)
        say(f"enrollments, lists of {size}: {figure['per_second']}/s ({figure['list_ms_median']} ms a list), load {figure['loadavg']}")
    drained(posted)  # their welcome emails

    n = sizes["welcome"]
    result["welcome"] = producer.measure_welcome(post, stub, n, 200, min(120, remaining(reserve=200)), split)
    result["welcome"]["loadavg"] = producer.loadavg()
    say(f"welcome: {result['welcome']['per_second']} emails/s, load {result['welcome']['loadavg']}")
    drained(n)

    result["reminders"] = []
    for n in sizes["reminders"]:
        lead = 8 + n * 0.004  # the enrollments and their welcomes first
        if remaining(reserve=200) < lead + 30 + n / 200:
            say(f"reminders, {n:,}: skipped, out of time")
            continue
        late = producer.measure_reminders(post, stub, n, lead, min(120, remaining(reserve=150)), split)
        late["loadavg"] = producer.loadavg()
        result["reminders"].append(late)
        say(f"reminders, {n:,} at one instant: first {late.get('first_ms')} ms, p50 {late.get('p50_ms')} ms, "
            f"p99 {late.get('p99_ms')} ms, load {late['loadavg']}")
        drained(3 * n)
    return result


# --- report -----------------------------------------------------------------------------

def mark(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def producer_rows(results: dict) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    api = results.get("api", {})
    for e in api.get("enroll", []):
        goal = GOALS.get(f"enroll_{e['list_size']}_per_second")
        rows.append((f"POST /api/events, lists of {e['list_size']:,} enrollments", f"{e['per_second']:,}/s "
                     f"({e['list_ms_median']} ms a list, {e['producers']} producers)",
                     f">= {goal:,}/s" if goal else "", mark(e["per_second"] >= goal) if goal else ""))
    w, noop = api.get("welcome"), results.get("noop", {})
    if w and w.get("per_second") and noop.get("tasks_per_second"):
        ratio = w["per_second"] / noop["tasks_per_second"]
        short = "" if w["complete"] else f" INCOMPLETE: {w['received']} of {w['enrollments']}"
        rows.append((f"welcome emails, {w['enrollments']:,} enrollments -> stub", f"{w['per_second']}/s = {ratio:.2f} x no-op{short}",
                     f">= {GOALS['welcome_ratio']} x no-op", mark(ratio >= GOALS["welcome_ratio"])))
    for r in api.get("reminders", []):
        if not r.get("received"):
            continue
        short = "" if r["complete"] else f" INCOMPLETE: {r['received']} of {r['messages']}"
        value = f"first {r['first_ms'] / 1000:.1f} s, p50 {r['p50_ms'] / 1000:.1f} s, p99 {r['p99_ms'] / 1000:.1f} s{short}"
        if r["reminders"] >= 10_000:
            target, ok = "p99 <= 10 s", r["p99_ms"] <= GOALS["reminders_10k_p99_ms"] and r["complete"]
        else:
            target = "<= 0.3 / 1 / 1.5 s"
            ok = (r["first_ms"] <= GOALS["reminders_1k_first_ms"] and r["p50_ms"] <= GOALS["reminders_1k_p50_ms"]
                  and r["p99_ms"] <= GOALS["reminders_1k_p99_ms"] and r["complete"])
        rows.append((f"{r['reminders']:,} reminders due at once (email+sms)", value, target, mark(ok)))
    return rows


def table(results: dict) -> str:
    rows: list[tuple[str, str, str, str]] = producer_rows(results)
    for f in results.get("fan_out", []):
        rows.append((f"fan-out, {f['registrations']:,} registrations", f"{f['seconds']:.2f} s = {f['registrations_per_second']:,}/s",
                     f">= {GOALS['fan_out_per_second']:,}/s", mark(f["ok"])))
    d, noop = results.get("dispatch", {}), results.get("noop", {})
    if d:
        short = "" if d["complete"] else f" INCOMPLETE: {d['received']} of {d['messages']}"
        rate = f"{d['messages_per_second']} msg/s ({d['seconds']:.1f} s){short}"
        rows.append((f"dispatch, {d['messages']:,} msgs due -> stub", rate, "", ""))
    if noop:
        short = "" if noop["complete"] else f" INCOMPLETE: {noop['ran']} of {noop['tasks']}"
        rows.append((f"no-op task, {noop['tasks']:,} tasks", f"{noop['tasks_per_second']} tasks/s{short}", "", ""))
    if "ratio" in results:
        rows.append(("dispatch / no-op", f"{results['ratio']:.3f}", f">= {GOALS['dispatch_ratio']}", mark(results["ratio_ok"])))
    m = results.get("memory")
    if m:
        rows.append((f"worker RSS, {m['far_steps_pending']:,} steps days ahead", f"{m['rss_delta_mb']:+.2f} MB "
                     f"({m['empty']['rss_kb'] / 1024:.1f} -> {m['with_far_steps']['rss_kb'] / 1024:.1f})",
                     f"< {GOALS['memory_delta_mb']} MB", mark(m["ok"])))
        eta = m.get("plain_eta", {})
        if not eta.get("skipped"):
            held = f"{eta['rss_delta_mb']:+.2f} MB = {eta['kb_per_task']} kB/task"
            rows.append((f"  for comparison: {eta['tasks']:,} plain ETA tasks", held, "", ""))
    slow = results.get("slow_provider")
    if slow:
        sender = f"+ sender_email, {slow['sender_processes']} processes"
        for label, key in (("prefork worker alone", "worker_alone"), (sender, "with_sender")):
            got = slow[key]
            short = "" if got["complete"] else f" INCOMPLETE: {got['received']} of {slow['messages']}"
            goal, ok = "", ""
            if key == "with_sender":
                goal = f">= {GOALS['slow_provider_per_second']:,}/s"
                ok = mark(bool(got["messages_per_second"]) and got["messages_per_second"] >= GOALS["slow_provider_per_second"])
            value = f"{got['messages_per_second']} emails/s{short}"
            rows.append((f"provider answering in {slow['latency_ms']} ms: {label}", value, goal, ok))
    for late in results.get("lateness", []):
        label = "spread over 60 s" if late.get("spread_seconds") else "all at one instant"
        if late.get("received"):
            short = "" if late["complete"] else f" INCOMPLETE: {late['received']} of {late['steps']}"
            spread = f"p50 {late['p50_ms']:.0f} ms, p99 {late['p99_ms']:.0f} ms{short}"
            rows.append((f"lateness, {late['steps']:,} steps {label}", spread, "", ""))
    q = results.get("queries")
    if q:
        def per(kind: str, label: str) -> str:
            return "/".join(f"{v:g}" for k, v in q[kind].items() if k.rsplit("_", 1)[0] == label)
        rows.append(("queries per message, send task (1/10/100)", f"email {per('send', 'email')}; sms step {per('send', 'email+sms')}",
                     f"constant, <= {GOALS['queries_per_message']}", mark(q["ok"])))
        rows.append(("  whole path, step + send task", f"email {per('path', 'email')}; sms step {per('path', 'email+sms')}", "", ""))
    width = [max(len(r[i]) for r in rows + [("figure", "value", "goal", "met")]) for i in range(4)]
    lines = [" | ".join(h.ljust(width[i]) for i, h in enumerate(("figure", "value", "goal", "met")))]
    lines.append("-+-".join("-" * w for w in width))
    lines += [" | ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def machine() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    import redis
    from django.conf import settings

    return {
        "cpus": os.cpu_count(), "python": platform.python_version(), "postgresql": pg,
        "redis": redis.Redis.from_url(settings.CELERY_BROKER_URL).info("server")["redis_version"],
        "kernel": platform.release(),
    }


def update_readme(text: str, when: str, seconds: float, load: str = "") -> None:
    """Both READMEs carry the latest table: replace the block between their markers."""
    for readme in (HERE / "README.md", HERE.parent / "README.md"):
        content = readme.read_text()
        start = content.find("<!-- bench-table")
        end = content.find("<!-- /bench-table -->")
        if start < 0 or end < 0:
            continue
        head = content.index("\n", start) + 1
        block = f"```\n{text}\n```\n(`make bench`, {when}, {seconds:.0f} s{load})\n"
        readme.write_text(content[:head] + block + content[end:])


def write_results(results: dict) -> None:
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(RESULTS)


# --- main -------------------------------------------------------------------------------

def start_worker(app, name: str, env: dict[str, str]) -> Worker:
    worker = Worker(name, env)
    worker.wait_ready(app)
    say(f"{name} up (pid {worker.pid}, pool {worker.pool_pids()})")
    # Both pool processes busy at once, so both have forked, imported and connected.
    for _ in range(4):
        app.send_task("bench.sleep", args=(0.2,))
    measure_noop(app, 200)
    return worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for trying the harness (not for the README)")
    parser.add_argument("--only", type=lambda text: set(text.split(",")), default=PHASES,
                        help=f"run only these figures (comma-separated: {','.join(sorted(PHASES))}), writing "
                             "bench/results-only.json and leaving the README alone: for working on one figure")
    args = parser.parse_args()
    if not args.only <= PHASES:
        parser.error(f"--only: unknown {sorted(args.only - PHASES)}; choose among {sorted(PHASES)}")
    partial = args.only != PHASES
    if partial:
        global RESULTS
        RESULTS = HERE / "results-only.json"
    require_own_redis()
    sizes: dict[str, Any] = {"fan_out": (10_000, 100_000), "dispatch": 5000, "noop": 5000, "slow": 5000, "lateness": 1000, "eta": 10_000,
             "settle": 8.0, "enroll": ((200, 10), (1000, 4)), "welcome": 3000, "reminders": (1000, 10_000)}
    if args.quick:
        sizes = {"fan_out": (1000, 5000), "dispatch": 500, "noop": 500, "slow": 500, "lateness": 100, "eta": 1000, "settle": 3.0,
                 "enroll": ((200, 3), (1000, 1)), "welcome": 600, "reminders": (200, 1000)}

    stub = BenchStub()
    worker_env = configure_environment(stub)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from bench import world

    if "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        sys.exit("bench: needs PostgreSQL (SQLite is not a meaningful benchmark); unset DATABASE_URL to let make bench create drip_bench.")
    say(f"database {settings.DATABASES['default']['NAME']}, broker {settings.CELERY_BROKER_URL}, stub {stub.url}")
    call_command("migrate", verbosity=0)
    in_use = {k: v for k, v in world.rows_in_use().items() if v}
    if in_use and os.environ.get("BENCH_DATABASE_OWNED") != "1":
        sys.exit(f"bench: wipes its database between phases and this one holds data ({in_use}); "
                 "unset DATABASE_URL so that `make bench` creates and drops its own drip_bench.")
    reset_broker()

    results: dict = {
        "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"), "quick": args.quick,
        "command": "make bench", "machine": machine(),
        "settings": {name: getattr(settings, name, None) for name in
                     ("DRIP_TIME_SCALE", "DRIP_ENQUEUE_HORIZON", "DRIP_DISPATCH_INTERVAL", "DRIP_RECONCILE_INTERVAL",
                      "DRIP_RECONCILE_GRACE", "DRIP_RATE_LIMITS", "DEBUG", "CELERY_TASK_ACKS_LATE",
                      "CELERY_WORKER_PREFETCH_MULTIPLIER")}
        | {"CONN_MAX_AGE": settings.DATABASES["default"].get("CONN_MAX_AGE"), "worker": "prefork, concurrency 2"},
        "goals": GOALS
    }
    from bench.celery_bench import app

    if "queries" in args.only:
        say("queries per sent message (in-process, against the stub)")
        results["queries"] = measure_queries(stub)
    if "fan_out" in args.only:
        say(f"fan-out {sizes['fan_out'][0]:,} registrations")
        results["fan_out"] = [measure_fan_out(sizes["fan_out"][0])]
        say(f"fan-out {sizes['fan_out'][0]:,}: {results['fan_out'][0]['seconds']} s")

    world.wipe()
    worker, ticker, web_process = None, None, None
    try:
        worker = start_worker(app, "worker", worker_env)
        ticker = Ticker(app).start()
        time.sleep(2)

        if "dispatch" in args.only or "api" in args.only:  # the reference of both
            say(f"no-op throughput, {sizes['noop']:,} tasks")
            results["noop"] = measure_noop(app, sizes["noop"], worker)
            say(f"no-op: {results['noop']['tasks_per_second']} tasks/s")

        if "dispatch" in args.only:
            say(f"dispatch, {sizes['dispatch']:,} messages due together")
            results["dispatch"] = measure_dispatch(stub, worker, sizes["dispatch"], lead=10)
            say(f"dispatch: {results['dispatch']['messages_per_second']} msg/s")
            if results["noop"].get("tasks_per_second") and results["dispatch"].get("messages_per_second"):
                results["ratio"] = round(results["dispatch"]["messages_per_second"] / results["noop"]["tasks_per_second"], 4)
                results["ratio_ok"] = results["ratio"] >= GOALS["dispatch_ratio"]
            write_results(results)

        if "api" in args.only:
            port = free_port()
            web_process = web(worker_env, port)
            wait_http(f"http://127.0.0.1:{port}/api/events/schema")
            say(f"web up (gunicorn pid {web_process.pid}, workers {web_process.pool_pids()})")
            results["api"] = measure_from_requests(stub, worker, web_process, f"http://127.0.0.1:{port}", sizes)
            web_process.stop()
            web_process = None
            write_results(results)

        if "slow" not in args.only:
            pass
        elif remaining(reserve=200) > 120:
            say(f"dispatch, {sizes['slow']:,} emails, provider answering in 100 ms")
            results["slow_provider"] = slow = measure_slow_provider(app, stub, worker, worker_env, sizes["slow"], 0.1)
            say(f"slow provider: worker alone {slow['worker_alone']['messages_per_second']} msg/s, "
                f"with the sender {slow['with_sender']['messages_per_second']} msg/s")
        else:
            say("slow provider skipped: out of time")
        write_results(results)

        results["lateness"] = []
        for spread in (60.0, 0.0) if "lateness" in args.only else ():
            if remaining(reserve=200) < 30 + spread:
                say(f"lateness (spread {spread:g} s) skipped: out of time")
                continue
            say(f"lateness, {sizes['lateness']:,} steps, spread {spread:g} s")
            late = measure_lateness(stub, sizes["lateness"], spread)
            results["lateness"].append(late)
            say(f"lateness: p50 {late.get('p50_ms')} ms, p99 {late.get('p99_ms')} ms")
        write_results(results)

        if "memory" in args.only:
            say("memory")
            results["memory"], fan_out_big = measure_memory(app, worker, ticker, sizes["fan_out"][1], sizes["eta"], sizes["settle"])
            results.setdefault("fan_out", []).append(fan_out_big)
    finally:
        if web_process:
            web_process.stop()
        if ticker:
            ticker.stop()
        if worker:
            worker.kill()  # it may hold thousands of 3-day ETA tasks: no point in a warm shutdown
        reset_broker()
    write_results(results)

    stub.close()
    world.wipe()
    results["duration_seconds"] = round(time.monotonic() - STARTED, 1)
    results["loadavg"] = {"start": LOAD_AT_START, "end": producer.loadavg()}
    results["table"] = table(results).splitlines()
    write_results(results)
    if not args.quick and not partial:
        load = f"; load average {LOAD_AT_START} at the start, {results['loadavg']['end']} at the end (2 cores)"
        update_readme(table(results), results["generated_at"], results["duration_seconds"], load)
    print(table(results))
    print(f"\nwrote {RESULTS.relative_to(HERE.parent)} in {results['duration_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
