"""`python manage.py simulate pre|post|all [--cleanup]`: the whole flow in about a minute,
against the running services (`make run`): the real event API, the real funnels, the real
worker. Time is fast-forwarded by making each next step due now (drip.engine.services.run_steps_now) rather
than by waiting, and every message is printed as the worker finishes it.

Demo rows are marked: every external id starts with "sim-". `--cleanup` removes them all.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from drip.domain.funnels import Anchor, Funnel, FunnelStep, Trigger, started_by
from drip.doors.intake.apply import handle_payload
from drip.engine import services
from drip.models import ConsentRecord, Contact, DeliveryReport, Event, Message, Registration, Step

DEMO_PREFIX = "sim-"
POLL = 0.1  # seconds between looks at the Message table
BUSY_MESSAGE = (Message.Status.QUEUED, Message.Status.SENDING)
BUSY_STEP = (*Step.OPEN, Step.Status.RUNNING)


@dataclass(frozen=True)
class DemoPerson:
    key: str
    name: str
    phone: str
    timezone: str
    sms_consent: bool
    attends: bool

    def describe(self) -> str:
        sms = "email + SMS consent" if self.sms_consent else "email consent only (no SMS)"
        return f"{self.name:<6} {sms}, {'attends' if self.attends else 'does not attend'}"


PEOPLE = (
    DemoPerson("ada", "Ada", "+14155550101", "America/New_York", sms_consent=True, attends=True),
    DemoPerson("grace", "Grace", "+14155550102", "Europe/Paris", sms_consent=False, attends=False),
    DemoPerson("alan", "Alan", "+14155550103", "Europe/London", sms_consent=True, attends=False),
)


def human(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes and not days else ""]
    return " ".join(p for p in parts if p) or f"{seconds} s"


def when_label(funnel: Funnel, definition: FunnelStep) -> str:
    """The step's place in funnel time, as campaigns/funnels.py defines it."""
    if definition.offset is None:
        return "at enrollment"
    anchor = "start" if funnel.anchor is Anchor.START else "completion"
    sign = "−" if definition.offset < timedelta(0) else "+"
    hours = abs(definition.offset.total_seconds()) / 3600
    amount = f"{hours / 24:g} d" if hours >= 48 else f"{hours:g} h"
    return f"{anchor} {sign} {amount}"


def remove_demo_rows() -> Counter[str]:
    """Every row a simulation created: events, contacts and registrations marked "sim-",
    their steps, messages, reports and consent records. Deleted explicitly, history first:
    real rows are never deleted (PROTECT; drip.engine.erasure), but demo rows are nobody's."""
    removed: Counter[str] = Counter()
    demo = DEMO_PREFIX
    registrations = Q(contact__external_id__startswith=demo) | Q(event__external_id__startswith=demo)
    with transaction.atomic():
        for rows in (
            DeliveryReport.objects.filter(Q(message__contact__external_id__startswith=demo)
                                          | Q(message__registration__event__external_id__startswith=demo)),
            Message.objects.filter(Q(contact__external_id__startswith=demo)
                                   | Q(registration__event__external_id__startswith=demo)),
            Step.objects.filter(Q(registration__contact__external_id__startswith=demo)
                                | Q(registration__event__external_id__startswith=demo)),
            ConsentRecord.objects.filter(contact__external_id__startswith=demo),
            Registration.objects.filter(registrations),
            *(model.objects.filter(external_id__startswith=demo) for model in (Event, Contact)),
        ):
            _, per_model = rows.delete()
            removed.update({label.split(".")[-1].lower(): n for label, n in per_model.items()})
    return removed


class Timeline:
    """Prints each message of the demo once it is final (sent, skipped, failed...), and each
    step that ended without any message (skipped, cancelled), with the time since the start."""

    def __init__(self, out: OutputWrapper, started: datetime, people: dict[int, str]) -> None:
        self.out = out
        self.started = started
        self.people = people  # registration pk → demo person's name
        self.shown_messages: set[int] = set()
        self.shown_steps: set[int] = set()

    def poll(self) -> None:
        # Final messages, and those held for the recipient's quiet hours (shown as "held").
        messages = (
            Message.objects.filter(registration_id__in=self.people)
            .filter(~Q(status__in=BUSY_MESSAGE) | Q(status=Message.Status.QUEUED, held_until__isnull=False))
            .exclude(id__in=self.shown_messages).order_by("updated_at", "id")
        )
        for message in messages:
            self.shown_messages.add(message.pk)
            at = message.sent_at or message.updated_at
            registration = message.registration_id or 0  # every demo message belongs to a registration
            status = "held" if message.held_until is not None and message.status == Message.Status.QUEUED else message.status
            self._line(at, message.template_type, message.channel, registration, status, self._detail(message))
        quiet_steps = (
            Step.objects.filter(
                registration_id__in=self.people, status__in=[Step.Status.SKIPPED, Step.Status.CANCELLED, Step.Status.FAILED]
            )
            .exclude(id__in=self.shown_steps).order_by("finished_at", "id")
        )
        for step in quiet_steps:
            self.shown_steps.add(step.pk)
            self._line(step.finished_at or timezone.now(), step.key, "-", step.registration_id, f"step {step.status}", step.reason)

    def _line(self, at: datetime, what: str, channel: str, registration_id: int, status: str, detail: str) -> None:
        elapsed = max(0.0, (at - self.started).total_seconds())
        name = self.people.get(registration_id, "?")
        self.out.write(f"  +{elapsed:5.1f}s  {what:<15} {channel:<5} {name:<6} {status:<8} {detail}".rstrip())

    @staticmethod
    def _detail(message: Message) -> str:
        if message.status not in (Message.Status.SENT, Message.Status.DELIVERED):
            return message.error
        text = message.subject or " ".join(message.body.split())
        return f"→ {message.to}: {text[:60]}"


class Simulation:
    def __init__(self, out: OutputWrapper, pause: float, timeout: float, cleanup_after: bool = False) -> None:
        self.out = out
        self.cleanup_after = cleanup_after
        self.pause = pause
        self.timeout = timeout
        self.prefix = f"{DEMO_PREFIX}{uuid.uuid4().hex[:6]}-"
        self.started = timezone.now()  # reset when the first event goes out: the timeline's zero
        self.registrations: dict[str, Registration] = {}
        self.timeline: Timeline | None = None

    def run(self, scenario: str) -> None:
        _check_broker()
        _warn_without_worker(self.out)
        self.out.write(f"Simulating the {'pre-event and post-event' if scenario == 'all' else scenario + '-event'} funnel"
                       f" (demo ids start with {self.prefix}):")
        for person in PEOPLE:
            self.out.write(f"  {person.describe()}")
        self.started = timezone.now()
        # For "post" alone the event is already over: enrolling after its start plans no
        # pre-event step, so only the post-event funnel runs.
        starts_at = self.started + (timedelta(hours=-1) if scenario == "post" else timedelta(days=2))
        self.enroll(starts_at)
        if scenario in ("pre", "all"):
            for funnel in started_by(Trigger.ENROLLED):
                self.drive(funnel)
        if scenario in ("post", "all"):
            self.complete()
            for funnel in started_by(Trigger.COMPLETED):
                self.drive(funnel)
        self.summarize()

    def _send(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Through the event API's own code path: the demo is what a producer would do.
        return handle_payload(events)["results"]

    def enroll(self, starts_at: datetime) -> None:
        events = [
            {"name": "event.enrolled", "data": {
                "contactId": f"{self.prefix}{p.key}", "eventId": f"{self.prefix}webinar",
                "registrationId": f"{self.prefix}{p.key}-registration", "eventTitle": "Drip demo webinar",
                "scheduledAt": starts_at.isoformat(), "contactEmail": f"{p.key}+{self.prefix.rstrip('-')}@example.com",
                "contactPhone": p.phone, "firstName": p.name, "timezone": p.timezone,
                "joinUrl": "https://example.com/join/drip-demo", "emailConsent": True, "smsConsent": p.sms_consent,
            }}
            for p in PEOPLE
        ]
        results = self._send(events)
        for person, result in zip(PEOPLE, results, strict=True):
            self.registrations[person.key] = Registration.objects.get(external_id=result["registrationId"])
        people = {self.registrations[p.key].pk: p.name for p in PEOPLE}
        self.timeline = Timeline(self.out, self.started, people)
        planned = sum(r["stepsPlanned"] for r in results)
        gap = human(starts_at - self.started)
        when = f"starts in {gap}" if starts_at > self.started else f"started {gap} ago"
        self.out.write(f"\nevent.enrolled ×{len(results)}: the demo event {when}; {planned} pre-event steps planned")

    def complete(self) -> None:
        attended = [self.registrations[p.key].external_id for p in PEOPLE if p.attends]
        result = self._send([{"name": "event.completed", "data": {
            "eventId": f"{self.prefix}webinar", "completedAt": timezone.now().isoformat(),
            "attendedRegistrationIds": attended, "force": True,  # the demo ends its event early
            "recordingUrl": "https://example.com/recordings/demo", "slidesUrl": "https://example.com/slides/demo.pdf",
        }}])[0]
        branches = ", ".join(f"{n} {branch.replace('_', '-')}" for branch, n in result["branches"].items())
        self.out.write(f"\nevent.completed: the event is over ({branches}); {result['stepsPlanned']} post-event steps planned")

    def steps(self, funnel: Funnel) -> QuerySet[Step]:
        return Step.objects.filter(registration__in=self.registrations.values(), funnel=funnel.name)

    def drive(self, funnel: Funnel) -> None:
        """Step group by step group, in funnel order: the steps due at the same point of
        funnel time (every registration's reminder_24h, or thank_you with sorry_missed)
        run together, and the next group waits until their messages are out."""
        self.out.write(f"\n{funnel.name.replace('_', '-')} funnel:")
        driven: set[int] = set()
        while True:
            # Steps the worker already took on its own (a welcome is due at once) are a group
            # too, so their messages are shown under their own heading.
            to_show = list(
                self.steps(funnel).exclude(id__in=driven)
                .filter(status__in=[*Step.OPEN, Step.Status.RUNNING, Step.Status.DONE]).order_by("due_at", "id")
            )
            if not to_show:
                break
            offset = funnel.step(to_show[0].key).offset
            group = [s for s in to_show if funnel.step(s.key).offset == offset]
            driven.update(s.pk for s in group)
            keys = list(dict.fromkeys(s.key for s in group))
            label = when_label(funnel, funnel.step(keys[0]))
            wait = group[0].due_at - timezone.now()
            if wait > timedelta(seconds=1):
                self.out.write(f"» {' + '.join(keys)} ({label}, due in {human(wait)}): fast-forward, run now")
                services.run_steps_now(Step.objects.filter(id__in=[s.pk for s in group]))
            else:
                self.out.write(f"» {' + '.join(keys)} ({label}): due now")
            self.wait_until_done(Step.objects.filter(id__in=[s.pk for s in group]), " + ".join(keys))
            time.sleep(self.pause)
        # Anything the worker was already running on its own finishes before the summary.
        self.wait_until_done(self.steps(funnel), funnel.name)

    def wait_until_done(self, steps: QuerySet[Step], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        assert self.timeline is not None, "enroll() starts the timeline"
        while True:
            self.timeline.poll()
            busy = steps.filter(status__in=BUSY_STEP).exists() or Message.objects.filter(
                step__in=steps, status__in=BUSY_MESSAGE
            ).filter(held_until__isnull=True).exists()  # held for quiet hours: it goes in the morning
            if not busy:
                self.timeline.poll()
                return
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{what}: nothing finished within {self.timeout:.0f} s. Is the worker running? "
                    "Start the services with `make run` (they must share this database and REDIS_URL)."
                )
            time.sleep(POLL)

    def summarize(self) -> None:
        elapsed = (timezone.now() - self.started).total_seconds()
        messages = Message.objects.filter(registration__in=self.registrations.values())
        self.out.write(f"\nSummary ({elapsed:.1f} s):")
        for person in PEOPLE:
            counts = Counter(messages.filter(registration=self.registrations[person.key]).values_list("status", flat=True))
            self.out.write(f"  {person.describe():<52} {_counts(counts)}")
        total = Counter(messages.values_list("status", flat=True))
        self.out.write(f"  {sum(total.values())} messages: {_counts(total)}")
        if not self.cleanup_after:
            self.out.write(f'Demo rows have ids starting with "{DEMO_PREFIX}"; remove them with: python manage.py simulate --cleanup')


def _counts(counts: Counter[str]) -> str:
    order = [s for s in Message.Status.values if counts.get(s)]
    return ", ".join(f"{counts[s]} {s}" for s in order) or "none"


def _check_broker() -> None:
    from celery_app import app

    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # any transport's "cannot connect"; the message says which
        raise CommandError(
            f"cannot reach the Celery broker ({exc}). Start the services with `make run` first."
        ) from None


def _warn_without_worker(out: OutputWrapper) -> None:
    from celery_app import app

    try:
        replies = app.control.ping(timeout=1.0)
    except Exception:  # the check is a courtesy; the waits below time out with a clear error anyway
        replies = []
    if not replies:
        out.write("(no worker answered a ping yet: is `make run` running? Waiting for it anyway.)")


class Command(BaseCommand):
    help = (
        "Demo of the whole flow against the running services (make run): creates a demo event and three demo "
        "contacts, drives the real funnels through the real worker, fast-forwarding each next step to now, "
        "and prints every message as it goes out. Demo rows are marked sim-; --cleanup removes them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", nargs="?", choices=["pre", "post", "all"], help="which funnel(s) to run")
        parser.add_argument("--cleanup", action="store_true",
                            help="remove every demo row (ids starting with sim-); after the run, or alone")
        parser.add_argument("--pause", type=float, default=1.0, help="seconds between steps, to follow along (default 1)")
        parser.add_argument("--timeout", type=float, default=30.0,
                            help="seconds to wait for the worker to finish each step (default 30)")

    def handle(self, *args: Any, scenario: str | None, cleanup: bool, pause: float, timeout: float, **options: Any) -> None:
        if scenario is None and not cleanup:
            raise CommandError("say what to simulate: pre, post or all (or --cleanup alone to remove demo rows)")
        if options["verbosity"] < 2:
            # The timeline is this command's output; the planner's log lines (this process's
            # share of the work) would bury it. -v 2 shows them.
            for name in ("drip", "campaigns"):
                logging.getLogger(name).setLevel(logging.WARNING)
        if scenario:
            Simulation(self.stdout, max(0.0, pause), timeout, cleanup_after=cleanup).run(scenario)
        if cleanup:
            removed = remove_demo_rows()
            what = ", ".join(f"{n} {label}" for label, n in sorted(removed.items())) or "nothing"
            self.stdout.write(f"Removed the demo rows: {what}.")
