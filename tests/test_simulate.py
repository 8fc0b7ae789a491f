"""`manage.py simulate` end to end against a real worker, and the fast-forward it uses."""
from __future__ import annotations

import io
import re
import time
from collections import Counter
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from drip.domain.pacing import parse_quiet_hours
from drip.engine import services
from drip.engine.services import run_steps_now
from drip.models import ConsentRecord, Contact, Event, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event
from tests.helpers import flush_broker

# "  + 12.3s  reminder_24h    sms   Grace  skipped  no sms consent"
LINE = re.compile(r"^  \+\s*(?P<at>[\d.]+)s  (?P<what>\S+)\s+(?P<channel>\S+)\s+(?P<who>\S+)\s+(?P<status>\S+)(?:\s+(?P<detail>.*))?$")

SENT, SKIPPED = "sent", "skipped"
PRE = [
    ("welcome", "email", "Ada", SENT), ("welcome", "email", "Grace", SENT), ("welcome", "email", "Alan", SENT),
    *[(key, channel, who, SENT) for key in ("reminder_24h", "reminder_1h") for channel in ("email", "sms")
      for who in ("Ada", "Alan")],
    ("reminder_24h", "email", "Grace", SENT), ("reminder_24h", "sms", "Grace", SKIPPED),
    ("reminder_1h", "email", "Grace", SENT), ("reminder_1h", "sms", "Grace", SKIPPED),
]
POST = [
    ("thank_you", "email", "Ada", SENT), ("resources", "email", "Ada", SENT), ("nurture", "email", "Ada", SENT),
    *[(key, "email", who, SENT) for key in ("sorry_missed", "reengagement", "final_followup") for who in ("Grace", "Alan")],
    ("reengagement", "sms", "Alan", SENT), ("reengagement", "sms", "Grace", SKIPPED),
]
FUNNEL_ORDER = ["welcome", "reminder_24h", "reminder_1h", "thank_you", "sorry_missed", "resources", "reengagement",
                "nurture", "final_followup"]


def timeline(output: str) -> list[tuple[str, str, str, str]]:
    return [(m["what"], m["channel"], m["who"], m["status"]) for m in map(LINE.match, output.splitlines()) if m]


def simulate(*args: str) -> str:
    out = io.StringIO()
    call_command("simulate", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def daytime(settings):
    """The demo's people live in three zones; quiet hours (tested below) off, so every
    marketing SMS goes out whatever the hour of the run."""
    settings.DRIP_SMS_QUIET_HOURS = None


def test_simulate_all_runs_both_funnels_through_the_worker_and_prints_each_message(worker, providers, daytime):
    started = time.monotonic()
    output = simulate("all", "--pause", "0")
    took = time.monotonic() - started

    lines = timeline(output)
    assert Counter(lines) == Counter(PRE + POST), output
    # Funnel order: no message of a later step before the last one of an earlier step
    # (thank_you and sorry_missed share a due time, and so on: compare by group).
    group = {"welcome": 0, "reminder_24h": 1, "reminder_1h": 2, "thank_you": 3, "sorry_missed": 3,
             "resources": 4, "reengagement": 4, "nurture": 5, "final_followup": 6}
    assert [group[what] for what, *_ in lines] == sorted(group[what] for what, *_ in lines), output
    skipped = [m for m in map(LINE.match, output.splitlines()) if m and m["status"] == SKIPPED]
    assert {m["detail"] for m in skipped} == {"no sms consent"}
    sent_to = [m["detail"] for m in map(LINE.match, output.splitlines()) if m and m["status"] == SENT]
    assert all(d.startswith("→ ") for d in sent_to)

    headers = [line for line in output.splitlines() if line.startswith("» ")]
    assert [re.sub(r", due in [^)]*", "", h) for h in headers] == [
        "» welcome (at enrollment): due now",
        "» reminder_24h (start − 24 h): fast-forward, run now",
        "» reminder_1h (start − 1 h): fast-forward, run now",
        "» thank_you + sorry_missed (completion + 1 h): fast-forward, run now",
        "» resources + reengagement (completion + 24 h): fast-forward, run now",
        "» nurture (completion + 3 d): fast-forward, run now",
        "» final_followup (completion + 7 d): fast-forward, run now",
    ]
    assert "event.completed: the event is over (1 attended, 2 no-show); 9 post-event steps planned" in output
    assert "  26 messages: 23 sent, 3 skipped" in output
    assert len(providers.messages()) == 23  # what the timeline says is what reached the providers
    assert took < 60

    cleaned = simulate("--cleanup")
    assert cleaned.startswith("Removed the demo rows:")
    for model in (Contact, Event, Registration):
        assert not model.objects.filter(external_id__startswith="sim-").exists()
    assert not (Step.objects.exists() or Message.objects.exists() or ConsentRecord.objects.exists())


def test_simulate_post_runs_only_the_post_event_funnel(worker, providers, daytime):
    output = simulate("post", "--pause", "0", "--cleanup")
    assert Counter(timeline(output)) == Counter(POST), output
    assert "0 pre-event steps planned" in output
    assert not Contact.objects.filter(external_id__startswith="sim-").exists()


def test_cleanup_leaves_other_rows_alone(transactional_db):
    keep = enroll(make_contact(external_id="real-1"), make_event(external_id="real-event"))
    enroll(make_contact(external_id="sim-x-ada"), make_event(external_id="sim-x-webinar"))
    simulate("--cleanup")
    assert list(Registration.objects.all()) == [keep]
    assert Step.objects.filter(registration=keep).count() == 3


def test_it_needs_a_scenario_or_cleanup(db):
    with pytest.raises(CommandError, match="pre, post or all"):
        call_command("simulate")


def test_it_says_so_when_no_worker_runs(transactional_db):
    flush_broker()
    try:
        with pytest.raises(CommandError, match="Is the worker running"):
            simulate("pre", "--pause", "0", "--timeout", "1")
    finally:
        flush_broker()  # the welcome tasks nobody consumed


def test_run_steps_now_runs_pending_and_enqueued_steps_at_once(worker, providers, settings):
    settings.DRIP_ENQUEUE_HORIZON = 3600  # the 1 h reminder is handed to Celery with a far ETA
    registration = enroll(make_contact(), make_event(starts_in=2 * 3600))
    providers.wait_for(1)  # the welcome
    steps = Step.objects.filter(registration=registration)
    assert {s.key: s.status for s in steps.exclude(key="welcome")} == {"reminder_24h": "skipped", "reminder_1h": "enqueued"}

    assert run_steps_now(steps) == 1  # the welcome is done and the 24 h reminder skipped: left alone
    got = providers.wait_for(3, timeout=10)
    assert sorted(r.kind for r in got[1:]) == ["email", "sms"]
    reminder = steps.get(key="reminder_1h")
    assert reminder.status == "done" and reminder.due_at < timezone.now()
    assert reminder.anchor_at == registration.event.starts_at  # still the same plan


def test_run_steps_now_leaves_the_checks_to_the_step_task(worker, providers):
    registration = enroll(make_contact(), make_event(starts_in=3 * 24 * 3600))
    providers.wait_for(1)
    services.cancel_registration(registration)
    Step.objects.filter(registration=registration, key="reminder_1h").update(status="pending", reason="")
    run_steps_now(Step.objects.filter(registration=registration))
    deadline = time.monotonic() + 10
    while Step.objects.filter(registration=registration, status__in=["enqueued", "running"]).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert Step.objects.get(registration=registration, key="reminder_1h").reason == "registration cancelled"
    assert len(providers.messages()) == 1
    assert timezone.now() - registration.created_at < timedelta(minutes=1)


def test_a_marketing_sms_inside_quiet_hours_is_shown_held_and_the_demo_still_ends(worker, providers, settings):
    # Alan (Europe/London) is inside a quiet window that holds the whole day but one minute.
    now = timezone.now().astimezone(ZoneInfo("Europe/London"))
    window = f"{(now + timedelta(minutes=3)):%H:%M}-{(now + timedelta(minutes=2)):%H:%M}"
    settings.DRIP_SMS_QUIET_HOURS = parse_quiet_hours(window)
    output = simulate("post", "--pause", "0")
    lines = timeline(output)
    assert ("reengagement", "sms", "Alan", "held") in lines, output
    [held] = [m for m in map(LINE.match, output.splitlines()) if m and m["status"] == "held"]
    assert held["detail"].startswith("held for quiet hours until") and "Europe/London" in held["detail"]
    assert not [r for r in providers.messages("sms")]
