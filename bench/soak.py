"""The chaos soak: `make soak` (scripts/soak.sh sets up the database, Redis and the RabbitMQ
vhost, then runs `python -m bench.soak` once per broker). bench/README.md, "Chaos soak".

The Procfile's web, worker, sender_email, sender_sms and beat run twice each; producers
enroll SOAK_REGISTRATIONS registrations over several events through `POST /api/events`,
every funnel delay compressed by DRIP_TIME_SCALE so that the whole pre- and post-event
funnel fits in SOAK_SECONDS; the events are completed through the API with some attendance.
Meanwhile a chaos loop with a fixed seed SIGKILLs workers and senders, flushes the broker,
terminates the database connections and makes the provider stub refuse, hang or drop. After a
settle period without chaos, what the stub received is compared with what should have been
sent (bench/soak_report.py) and written to bench/soak.json.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.soak_procs import Fleet
from bench.soak_report import Registration, analyse, print_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "soak.json"
TOKEN = "soak-token"
STARTED = time.monotonic()
H, D = timedelta(hours=1), timedelta(days=1)
# The funnel span the scale must fit: reminder_24h (start - 24 h) to final_followup (completed + 7 d).
FUNNEL_SPAN = 24 * H + 7 * D
LIST_SIZE = 500  # enrollments per API request (about 250 kB, well under the 1 MB limit)
ENROLL_RATE_GUESS = 250.0  # registrations/s through the API on 2 busy cores, for each event's lead
# One event's whole funnel takes this share of SOAK_SECONDS; the rest staggers the events, so
# their reminders and follow-ups come in turn (as a real calendar's do) instead of all at once.
FUNNEL_SHARE = 0.5
AREA_CODES = ("415", "212", "646", "303", "617", "312", "720", "206")


def say(text: str) -> None:
    print(f"[soak {time.monotonic() - STARTED:6.1f}s] {text}", file=sys.stderr, flush=True)


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


@dataclass
class Plan:
    broker: str  # "redis" or "amqp"
    registrations: int
    seconds: float
    seed: int
    events: int
    scale: float
    grace: float
    settle_max: float
    lead: float  # from the start of an event's enrollment to its start
    gap: float  # between the starts of two events' enrollments

    @classmethod
    def from_environment(cls) -> Plan:
        registrations = int(env_number("SOAK_REGISTRATIONS", 20_000))
        seconds = env_number("SOAK_SECONDS", 600)
        events = int(env_number("SOAK_EVENTS", 5))
        scale = round(FUNNEL_SPAN.total_seconds() / (FUNNEL_SHARE * seconds), 1)
        # An event starts after its enrollment (at a guessed rate, with room to spare) and its
        # reminder_24h: every registration is in before its first reminder is due.
        lead = 24 * H / timedelta(seconds=scale) + 1.5 * registrations / events / ENROLL_RATE_GUESS + 5
        # The last event's final_followup falls due at the end of SOAK_SECONDS.
        rest = seconds - lead - 1 - 7 * D / timedelta(seconds=scale)
        return cls(
            broker=os.environ.get("SOAK_BROKER_NAME", "redis"), registrations=registrations, seconds=seconds,
            seed=int(env_number("SOAK_SEED", 20261127)), events=events, scale=scale,
            grace=env_number("SOAK_RECONCILE_GRACE", 20), settle_max=env_number("SOAK_SETTLE_MAX", 300),
            lead=round(lead, 1), gap=round(max(0.0, rest) / max(1, events - 1), 1),
        )

    def offset(self, delta: timedelta) -> float:
        return delta.total_seconds() / self.scale


# --- environment ----------------------------------------------------------------------------

def process_environment(plan: Plan, stub_url: str) -> dict[str, str]:
    """Production settings, the providers pointed at the stub, the funnel compressed. Set in
    this process too (it reads the database through Django for the figures)."""
    env = dict(os.environ)
    env.update({
        "PATH": f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "drip.settings", "DRIP_DOTENV": "0", "DEBUG": "0",
        "SECRET_KEY": "soak-only-not-secret", "ALLOWED_HOSTS": "127.0.0.1,localhost", "DRIP_API_TOKEN": TOKEN,
        "SECURE_SSL_REDIRECT": "0",  # the web processes listen on loopback, plain http
        "DRIP_SENDER_ADDRESS": "Drip soak, 1 Example Street, Springfield",
        "DRIP_TIME_SCALE": str(plan.scale), "DRIP_SMS_QUIET_HOURS": "off",
        # Recovery within the soak's minutes: a lost enqueue is taken back after 20 s (120 s in
        # production), checked every 10 s (30 s); a send killed inside its provider call is
        # given up as "outcome unknown" after 60 s (600 s).
        "DRIP_RECONCILE_GRACE": str(plan.grace), "DRIP_RECONCILE_INTERVAL": os.environ.get("SOAK_RECONCILE_INTERVAL", "10"),
        "DRIP_SENDING_TIMEOUT": os.environ.get("SOAK_SENDING_TIMEOUT", "60"),
        # The enqueue horizon is real seconds and the funnel is compressed: at production's
        # 300 s every step of the run (8 funnel days) would wait as an ETA task in a worker's
        # memory from the start. 60 s keeps a day of funnel time there, the rest in the
        # database until the dispatcher claims it, as in production where 300 s is 5 minutes.
        "DRIP_ENQUEUE_HORIZON": os.environ.get("SOAK_ENQUEUE_HORIZON", "60"),
        # 2 x 2 senders x 8 threads: 32 database connections instead of 64 on a shared server.
        "DRIP_SENDER_THREADS": os.environ.get("DRIP_SENDER_THREADS", "8"),
        "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend", "ANYMAIL_POSTMARK_SERVER_TOKEN": "soak-server-token",
        "ANYMAIL_POSTMARK_API_URL": stub_url + "/", "SMS_BACKEND": "twilio", "TWILIO_ACCOUNT_SID": "ACsoak",
        "TWILIO_AUTH_TOKEN": "soak-auth-token", "TWILIO_FROM_NUMBER": "+15005550006", "TWILIO_API_BASE_URL": stub_url,
    })
    os.environ.update({k: v for k, v in env.items() if k != "PATH"})
    os.environ["DRIP_LOG_LEVEL"] = "WARNING"
    return env


def free_port_pair() -> int:
    """A port p with p and p + 1 free (the two web processes)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two adjacent free ports")


def start_stub(receipts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    receipts.write_text("")
    stub = subprocess.Popen(
        [sys.executable, "-m", "bench.soak_stub", str(receipts)], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, start_new_session=True,  # noqa: SIM115
    )
    assert stub.stdout is not None
    return stub, stub.stdout.readline().strip()


def migrate() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


# --- producers: the API ------------------------------------------------------------------

class Api:
    """POST /api/events, alternating between the two web processes, retrying what the chaos
    interrupts (a repeated event is harmless: docs/api.md)."""

    def __init__(self, ports: list[int]) -> None:
        self.urls = [f"http://127.0.0.1:{p}/api/events" for p in ports]
        self.session = requests.Session()
        self.calls = 0
        self.retries = 0

    def post(self, events: list[dict[str, Any]], attempts: int = 30) -> dict[str, Any]:
        body = json.dumps(events)
        for attempt in range(attempts):
            url = self.urls[self.calls % len(self.urls)]
            self.calls += 1
            try:
                response = self.session.post(url, data=body, timeout=60, headers={
                    "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                if response.status_code == 202:
                    return dict(response.json())
                if response.status_code < 500:
                    raise RuntimeError(f"API answered {response.status_code}: {response.text[:500]}")
                reason = f"{response.status_code} {response.text[:200]}"
            except requests.RequestException as exc:
                reason = str(exc)
            self.retries += 1
            say(f"API retry {attempt + 1} ({reason})")
            time.sleep(1)
        raise RuntimeError(f"API failed {attempts} times")

    def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for url in self.urls:
            while True:
                try:
                    if self.session.get(url + "/schema", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not answer within {timeout}s")
                time.sleep(0.5)


def make_registrations(plan: Plan, rng: random.Random) -> list[Registration]:
    """Consent mix: 2 % no email consent, 10 % no phone, 10 % a phone without SMS consent;
    60 % attend."""
    per_event = plan.registrations // plan.events
    regs = []
    for k in range(plan.events):
        for i in range(per_event):
            g = k * per_event + i
            phone = "" if g % 10 == 1 else f"+1{AREA_CODES[g // 10000 % len(AREA_CODES)]}555{g % 10000:04d}"
            regs.append(Registration(
                external_id=f"soak-e{k}-r{i}", contact_id=f"soak-c{g}", event=k, email=f"soak{g}@example.com", phone=phone,
                email_consent=g % 50 != 7, sms_consent=bool(phone) and g % 10 != 2, attended=rng.random() < 0.6,
            ))
    return regs


def enrollment(reg: Registration, starts_at: datetime) -> dict[str, Any]:
    data: dict[str, Any] = {
        "contactId": reg.contact_id, "eventId": f"soak-event-{reg.event}", "registrationId": reg.external_id,
        "eventTitle": f"Soak webinar {reg.event}", "scheduledAt": starts_at.isoformat(), "contactEmail": reg.email,
        "firstName": "Soak", "lastName": reg.contact_id, "timezone": "America/New_York",
        "joinUrl": "https://example.com/join", "emailConsent": reg.email_consent, "smsConsent": reg.sms_consent,
    }
    if reg.phone:
        data["contactPhone"] = reg.phone
    return {"name": "event.enrolled", "data": data}


def enroll_event(api: Api, k: int, regs: list[Registration], start: float) -> None:
    """Enroll one event's registrations, lists of LIST_SIZE, for a start at `start` (epoch, whole second)."""
    mine = [r for r in regs if r.event == k]
    began = time.time()
    starts_at = datetime.fromtimestamp(start, UTC)
    for offset in range(0, len(mine), LIST_SIZE):
        chunk = mine[offset:offset + LIST_SIZE]
        api.post([enrollment(r, starts_at) for r in chunk])
        for reg in chunk:
            reg.enrolled_at = time.time()
    rate = len(mine) / max(0.1, time.time() - began)
    say(f"event {k}: {len(mine)} enrolled at {rate:.0f}/s, starts in {start - time.time():.0f} s")


def complete(api: Api, k: int, regs: list[Registration]) -> float:
    completed_at = time.time()
    attended = [r.external_id for r in regs if r.event == k and r.attended]
    api.post([{"name": "event.completed", "data": {
        "eventId": f"soak-event-{k}", "completedAt": datetime.fromtimestamp(completed_at, UTC).isoformat(),
        "attendedRegistrationIds": attended}}])
    say(f"event {k} completed ({len(attended)} attended)")
    return completed_at


# --- chaos ----------------------------------------------------------------------------------

class Chaos(threading.Thread):
    """With a fixed seed: a SIGKILL of a random worker or sender every few seconds (started
    again 1-4 s later), and once each, at set fractions of the window: the stub answers 503,
    the broker loses its tasks, the database connections are terminated, the stub hangs past
    the client timeout, the stub accepts and drops the connection."""

    ONE_SHOTS = ((0.15, "stub_503"), (0.30, "broker"), (0.45, "database"), (0.55, "stub_hang"), (0.75, "stub_drop"))

    def __init__(self, fleet: Fleet, stub: subprocess.Popen, plan: Plan, window: tuple[float, float]) -> None:
        super().__init__(name="soak-chaos", daemon=True)
        self.fleet, self.stub, self.plan = fleet, stub, plan
        self.rng = random.Random(plan.seed)
        self.start_at, self.end_at = window
        self.stop_event = threading.Event()
        self.down: dict[str, float] = {}  # process -> when to start it again
        self.log: list[dict[str, Any]] = []

    def note(self, fault: str, **detail: Any) -> None:
        self.log.append({"at": round(time.time(), 3), "t": round(time.monotonic() - STARTED, 1), "fault": fault, **detail})
        say(f"chaos: {fault} {detail if detail else ''}")

    def run(self) -> None:
        pending = [(self.start_at + f * (self.end_at - self.start_at), name) for f, name in self.ONE_SHOTS]
        next_kill = time.time() + self.rng.uniform(3, 6)
        while not self.stop_event.wait(0.2):
            now = time.time()
            if now >= self.end_at:
                break
            self._restart_due(now)
            for crashed in self.fleet.revive_crashed(set(self.down)):
                self.note("crashed_restarted", process=crashed)
            if now >= next_kill:
                self._kill_one(now)
                next_kill = now + self.rng.uniform(4, 8)
            while pending and now >= pending[0][0]:
                getattr(self, pending.pop(0)[1])()
        self._restart_due(float("inf"))

    def _kill_one(self, now: float) -> None:
        choices = [k for k in self.fleet.killable() if k not in self.down]
        victim = self.rng.choice(choices)
        self.fleet.procs[victim].kill()
        self.down[victim] = now + self.rng.uniform(1, 4)
        self.note("sigkill", process=victim)

    def _restart_due(self, now: float) -> None:
        for key, at in list(self.down.items()):
            if now >= at:
                self.fleet.procs[key].start()
                del self.down[key]

    def stub_503(self) -> None:
        self._stub_fault("503", 20)

    def stub_hang(self) -> None:
        self._stub_fault("hang", 40)

    def stub_drop(self) -> None:
        self._stub_fault("drop", 10)

    def _stub_fault(self, mode: str, seconds: float) -> None:
        assert self.stub.stdin is not None
        self.stub.stdin.write(f"fault {mode} {seconds}\n")
        self.stub.stdin.flush()
        self.note(f"stub_{mode}", seconds=seconds)

    def broker(self) -> None:
        if self.plan.broker == "amqp":
            self.note("broker_purge", queues=purge_rabbitmq())
        else:
            import redis

            redis.Redis.from_url(os.environ["REDIS_URL"]).flushall()
            self.note("broker_flushall")

    def database(self) -> None:
        import psycopg

        name = os.environ["SOAK_DB_NAME"]
        with psycopg.connect(os.environ["SOAK_PG_ADMIN_URL"], autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
            ).fetchall()
        self.note("pg_terminate_backend", connections=len(rows))


def purge_rabbitmq() -> list[str]:
    """Every queue of the soak's vhost but the reconciler's mark: the tasks are gone, the
    broker is not (a purge the reconciler cannot detect; its grace brings the work back)."""
    from drip.timer.publish import BROKER_MARK

    vhost = os.environ["SOAK_AMQP_VHOST"]
    names = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--no-table-headers"],
                           capture_output=True, text=True, check=True).stdout.split()
    purged = [n for n in names if n != BROKER_MARK]
    for name in purged:
        subprocess.run(["rabbitmqctl", "-q", "purge_queue", "-p", vhost, name], capture_output=True, check=False)
    return purged


# --- housekeeping -------------------------------------------------------------------------

class Autovacuum(threading.Thread):
    """What autovacuum does on a production server, for a server that runs without it (this
    project's CI machine has autovacuum off). Every claim and outcome is an UPDATE; without
    vacuum the step and message tables of a 20,000-registration run carry several dead rows
    per live one, and without ANALYZE the planner never learns their sizes: the soak then
    measures a neglected database, not Drip."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="soak-autovacuum", daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.runs: list[float] = []  # seconds each VACUUM ANALYZE took

    def needed(self) -> bool:
        import psycopg

        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            row = conn.execute("SHOW autovacuum").fetchone()
        return row is None or row[0] != "on"

    def run(self) -> None:
        import psycopg

        if not self.needed():
            return
        say(f"the server's autovacuum is off: VACUUM ANALYZE every {self.interval:.0f} s instead")
        while not self.stop_event.wait(self.interval):
            began = time.monotonic()
            try:
                with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
                    conn.execute("VACUUM (ANALYZE)")
            except psycopg.Error as exc:  # the chaos terminates this connection too
                say(f"autovacuum stand-in: {exc}")
                continue
            self.runs.append(round(time.monotonic() - began, 2))


# --- settle -------------------------------------------------------------------------------

def open_work() -> dict[str, int]:
    """Steps and messages not yet at an end (what the reconciler still has to bring home)."""
    from django.db import connections
    from django.utils import timezone

    from drip.models import Message, Step

    connections.close_all()  # the chaos may have terminated this connection
    now = timezone.now()
    return {
        "steps_open": Step.objects.filter(status__in=["pending", "enqueued", "running"], due_at__lte=now).count(),
        "steps_future": Step.objects.filter(status="pending", due_at__gt=now).count(),
        "messages_open": Message.objects.filter(status__in=["queued", "sending"]).count(),
    }


def settle(plan: Plan, fleet: Fleet) -> dict[str, Any]:
    """No chaos: wait until nothing is open (at least one reconcile grace, at most settle_max)."""
    began = time.monotonic()
    minimum = plan.grace + 10
    work: dict[str, int] = {}
    while time.monotonic() - began < plan.settle_max:
        for crashed in fleet.revive_crashed(set()):
            say(f"settle: {crashed} had exited; started again")
        try:
            work = open_work()
        except Exception as exc:  # the database may still be reconnecting
            say(f"settle: {exc}")
            time.sleep(2)
            continue
        quiet = not any(work.values())
        if quiet and time.monotonic() - began >= minimum:
            break
        time.sleep(3)
    return {"seconds": round(time.monotonic() - began, 1), "left_open": work}


# --- the run --------------------------------------------------------------------------------

def run(plan: Plan) -> dict[str, Any]:
    log_dir = HERE / "logs" / "soak" / plan.broker
    log_dir.mkdir(parents=True, exist_ok=True)
    receipts = log_dir / "receipts.jsonl"
    stub, stub_url = start_stub(receipts, log_dir / "stub.log")
    env = process_environment(plan, stub_url)
    migrate()
    fleet = Fleet(env, log_dir, free_port_pair())
    api = Api(fleet.web_ports)
    # The chaos covers the enrollment too; its one-shot faults are spread over the funnel.
    chaos = Chaos(fleet, stub, plan, (0.0, 0.0))
    vacuum = Autovacuum(env_number("SOAK_VACUUM_INTERVAL", 30))
    vacuum.start()
    try:
        fleet.start_all()
        api.wait_up(90)
        fleet.wait_workers_ready(120)
        say(f"{len(fleet.procs)} processes up; scale {plan.scale} (1 h = {plan.offset(H):.2f} s, 7 d = {plan.offset(7 * D):.0f} s)")
        regs = make_registrations(plan, random.Random(plan.seed))
        chaos.start_at, chaos.end_at = time.time(), time.time() + plan.seconds
        chaos.start()
        starts, completions = drive_funnels(api, plan, regs, chaos)
        settled = settle(plan, fleet)
        say(f"settled in {settled['seconds']} s, open: {settled['left_open']}")
    finally:
        chaos.stop_event.set()
        vacuum.stop_event.set()
        fleet.stop_all()
        stop_stub(stub)
    # Only once nothing runs: rows and receipts read while sends were in flight would disagree.
    figures = analyse(plan.scale, regs, starts, completions, receipts)
    return {
        "broker": plan.broker, "date": datetime.now(UTC).isoformat(timespec="seconds"), "plan": plan.__dict__,
        "settle": settled, "faults": chaos.log, "processes": fleet.summary(),
        "api": {"calls": api.calls, "retries": api.retries}, "vacuum_seconds": vacuum.runs, **figures,
        "wall_seconds": round(time.monotonic() - STARTED, 1),
    }


def drive_funnels(api: Api, plan: Plan, regs: list[Registration], chaos: Chaos) -> tuple[dict[int, float], dict[int, float]]:
    """Enroll each event in turn (plan.gap apart), complete each one second after its start,
    and keep the chaos going until the last step (final_followup of the last event) is due."""
    began = time.time()
    starts = {k: float(int(began + k * plan.gap + plan.lead)) for k in range(plan.events)}
    # (when, what, event): an enrollment or a completion, in time order; a late one runs at once.
    timeline = sorted([(began + k * plan.gap, "enroll", k) for k in starts] + [(starts[k] + 1, "complete", k) for k in starts])
    completions = {}
    for at, action, k in timeline:
        time.sleep(max(0.0, at - time.time()))
        if action == "enroll":
            enroll_event(api, k, regs, starts[k])
        else:
            completions[k] = complete(api, k, regs)
    last_due = max(completions.values()) + plan.offset(7 * D)
    chaos.end_at = max(chaos.end_at, last_due)
    time.sleep(max(0.0, last_due - time.time()))
    chaos.stop_event.set()
    chaos.join(30)
    say("chaos over; settling")
    return starts, completions


def stop_stub(stub: subprocess.Popen) -> None:
    try:
        if stub.stdin is not None:
            stub.stdin.write("quit\n")
            stub.stdin.close()
        stub.wait(10)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        stub.kill()


def save(result: dict[str, Any]) -> None:
    """bench/soak.json keeps the last run of each broker."""
    try:
        saved = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        saved = {}
    saved[result["broker"]] = result
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(saved, indent=1, default=str) + "\n")
    tmp.replace(RESULTS)


def main() -> None:
    # scripts/soak.sh stops this process with SIGTERM: unwind, so `run` stops its processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = Plan.from_environment()
    say(f"plan: {plan}")
    result = run(plan)
    save(result)
    print_report(result)
    figures = result["figures"]
    # A run that did not settle proves nothing about the rest: it fails too, saying so.
    sys.exit(1 if figures["lost"] or figures["duplicated"] or figures["unfinished"] else 0)


if __name__ == "__main__":
    main()
