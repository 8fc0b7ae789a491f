"""The post-event funnel: both branches to the end on a real worker, `complete_event` and
its errors, dry runs, re-plans after an attendance change, and bulk planning."""
from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from drip.engine import services
from drip.engine.services import complete_event
from drip.models import Channel, Contact, Event, Message, Registration, Step
from tests.factories import enroll, make_contact, make_event
from tests.helpers import settled, wait_until

# 7 days of funnel time pass in 6 s: 1 h ≈ 0.04 s, 24 h ≈ 0.86 s, 3 d ≈ 2.6 s.
SCALE = 100800


def complete(*args: str) -> str:
    out = StringIO()
    call_command("complete_event", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def finished_event(db):
    """An event that ended an hour ago with four registrations."""
    event = make_event(starts_in=-7200, external_id="webinar-1")
    people = {
        "ada": make_contact(first_name="Ada"),
        "bob": make_contact(first_name="Bob"),
        "cy": make_contact(first_name="Cy", sms_consent=False),
        "dee": make_contact(first_name="Dee"),
    }
    registrations = {name: enroll(contact, event) for name, contact in people.items()}
    return event, registrations


def test_both_branches_run_to_the_end_in_order(worker, providers, settings, finished_event):
    settings.DRIP_TIME_SCALE = SCALE
    event, regs = finished_event
    output = complete(event.external_id, "--attended", regs["ada"].external_id, regs["dee"].external_id)
    assert "attended: 2 registration(s)" in output and "no-show:  2 registration(s)" in output
    wait_until(lambda: all(settled(r) for r in regs.values()), timeout=30)

    def received(name: str) -> list[tuple[str, str]]:
        contact = regs[name].contact
        sent = {m.provider_message_id: m for m in Message.objects.filter(contact=contact)}
        got = [r for r in providers.messages() if r.to in (contact.email, contact.phone)]
        return [(sent[r.provider_id].template_type, r.kind) for r in got]

    attended = [("thank_you", "email"), ("resources", "email"), ("nurture", "email")]
    assert received("ada") == attended
    assert received("dee") == attended
    bob = received("bob")
    assert bob[0] == ("sorry_missed", "email") and bob[-1] == ("final_followup", "email")
    assert sorted(bob[1:3]) == [("reengagement", "email"), ("reengagement", "sms")]
    assert received("cy") == [("sorry_missed", "email"), ("reengagement", "email"), ("final_followup", "email")]
    skipped = Message.objects.get(contact=regs["cy"].contact, channel=Channel.SMS)
    assert (skipped.status, skipped.error) == (Message.Status.SKIPPED, "no sms consent")
    event.refresh_from_db()
    assert event.status == Event.Status.COMPLETED


def test_unknown_attendance_counts_as_a_no_show(finished_event):
    event, regs = finished_event
    complete(event.external_id)
    keys = set(Step.objects.filter(funnel="post_event").values_list("key", flat=True))
    assert keys == {"sorry_missed", "reengagement", "final_followup"}


def test_attendance_from_a_csv_of_ids_and_emails(finished_event, tmp_path):
    event, regs = finished_event
    sheet = tmp_path / "attendance.csv"
    sheet.write_text(f"registration_id\n{regs['ada'].external_id}\n{regs['bob'].contact.email.upper()}\n")
    output = complete(event.external_id, "--attended-csv", str(sheet), "--completed-at", "2026-11-27T10:00:00+00:00", "--force")
    assert "attended: 2 registration(s)" in output
    assert set(Registration.objects.filter(attended=True).values_list("pk", flat=True)) == {regs["ada"].pk, regs["bob"].pk}
    event.refresh_from_db()
    assert event.completed_at.isoformat() == "2026-11-27T10:00:00+00:00"


def assert_nothing_written(event: Event) -> None:
    event.refresh_from_db()
    assert event.status == Event.Status.SCHEDULED and event.completed_at is None
    assert not Step.objects.filter(funnel="post_event").exists()
    assert not Registration.objects.filter(attended__isnull=False).exists()


@pytest.mark.parametrize("extra,error", [
    (["--attended", "no-such-registration"], "unknown registration id(s) for event webinar-1: no-such-registration"),
    (["--completed-at", "yesterday"], "--completed-at: 'yesterday' is not an ISO 8601 date and time"),
    (["--completed-at", "2026-11-27T10:00:00"], "has no UTC offset"),
    (["--attended-csv", "/nonexistent.csv"], "--attended-csv: no such file"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(finished_event, extra, error):
    event, _ = finished_event
    with pytest.raises(CommandError, match=re.escape(error)):
        complete(event.external_id, *extra)
    assert_nothing_written(event)


@pytest.mark.parametrize("content,error", [
    ("", "lists no registration id or email"),
    ("email\nnobody@example.com\n", "no registration for event webinar-1 with email(s): nobody@example.com"),
    ("a,b\nc,d\n", "expected one column"),
    (b"\xff\xfe\x00bad", "is not a readable UTF-8 CSV file"),
])
def test_a_malformed_csv_is_refused(finished_event, tmp_path, content, error):
    event, _ = finished_event
    sheet = tmp_path / "attendance.csv"
    sheet.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CommandError, match=re.escape(error)):
        complete(event.external_id, "--attended-csv", str(sheet))
    assert_nothing_written(event)


def test_an_unknown_event_is_an_error(db):
    with pytest.raises(CommandError, match="unknown event id: nope"):
        complete("nope")


def test_a_dry_run_prints_the_plan_and_writes_nothing(finished_event):
    event, regs = finished_event
    output = complete(event.external_id, "--attended", regs["ada"].external_id, "--dry-run")
    assert output.startswith("DRY RUN, nothing written")
    assert "attended: 1 registration(s)" in output and "post-event steps planned: 12" in output
    assert_nothing_written(event)


def test_completing_twice_never_plans_twice(finished_event):
    event, _ = finished_event
    complete(event.external_id)
    planned = Step.objects.count()
    with pytest.raises(CommandError, match="already completed"):
        complete(event.external_id)
    assert Step.objects.count() == planned


def test_completing_cancels_pending_pre_event_steps(db):
    event = make_event(starts_in=3600 * 48)
    registration = enroll(make_contact(), event)
    output = complete(event.external_id, "--force")  # before its start: only when forced
    assert "pre-event steps cancelled: 3" in output
    pre = Step.objects.filter(registration=registration, funnel="pre_event")
    assert {(s.status, s.reason) for s in pre} == {(Step.Status.CANCELLED, "event completed")}


def test_an_attendance_change_after_completion_replans_that_registration(finished_event):
    event, regs = finished_event
    complete(event.external_id)
    bob = regs["bob"]
    services.set_attendance(bob, True)
    steps = Step.objects.filter(registration=bob, funnel="post_event")
    no_show = steps.filter(key__in=["sorry_missed", "reengagement", "final_followup"])
    assert {(s.status, s.reason) for s in no_show} == {(Step.Status.CANCELLED, "attendance changed: now attended")}
    attended = {s.key: s for s in steps.filter(key__in=["thank_you", "resources", "nurture"])}
    assert set(attended) == {"thank_you", "resources", "nurture"}
    assert all(s.status == Step.Status.PENDING and s.plan_version == 2 for s in attended.values())
    event.refresh_from_db()
    assert attended["thank_you"].due_at == event.completed_at + timedelta(hours=1)
    # Flipping back re-plans the no-show branch once more, as a third plan version.
    services.set_attendance(bob, False)
    assert steps.filter(key="sorry_missed", status=Step.Status.PENDING, plan_version=3).exists()
    assert not steps.filter(key__in=["thank_you", "resources", "nurture"], status__in=Step.OPEN).exists()


def test_flipping_attendance_twice_keeps_what_was_sent_and_plans_the_rest(finished_event):
    event, regs = finished_event
    ada = regs["ada"]
    complete(event.external_id, "--attended", ada.external_id)
    Step.objects.filter(registration=ada, key="thank_you").update(status=Step.Status.DONE)  # it went out
    for attended in (False, True):
        services.set_attendance(ada, attended)
    steps = Step.objects.filter(registration=ada, funnel="post_event").exclude(status=Step.Status.CANCELLED)
    assert sorted(steps.values_list("key", "status")) == [
        ("nurture", Step.Status.PENDING), ("resources", Step.Status.PENDING), ("thank_you", Step.Status.DONE)
    ]


def test_planning_ten_thousand_registrations_takes_a_bounded_number_of_queries(db, django_assert_max_num_queries):
    event = make_event(starts_in=-7200)
    contacts = Contact.objects.bulk_create(
        [Contact(external_id=f"bulk-{i}", email=f"bulk{i}@example.com") for i in range(10_000)]
    )
    Registration.objects.bulk_create(
        [Registration(contact=c, event=event, external_id=f"bulk-r{i}") for i, c in enumerate(contacts)]
    )
    # One INSERT ... SELECT per funnel step, whatever the size of the event.
    with django_assert_max_num_queries(20):
        summary = complete_event(event, completed_at=timezone.now())
    assert summary.branches["no_show"] == 10_000 and summary.steps_planned == 30_000
    assert Step.objects.filter(funnel="post_event").count() == 30_000
    assert sorted(Step.objects.filter(registration__external_id="bulk-r7").values_list("key", "plan_version", "status")) == [
        ("final_followup", 1, "pending"), ("reengagement", 1, "pending"), ("sorry_missed", 1, "pending")
    ]


def test_completing_before_the_scheduled_start_is_refused_unless_forced(db):
    event = make_event(starts_in=3600 * 48)
    registration = enroll(make_contact(), event)
    with pytest.raises(CommandError, match="before the event's scheduled start"):
        complete(event.external_id)
    event.refresh_from_db()
    assert event.status == Event.Status.SCHEDULED
    assert not Step.objects.filter(registration=registration, status=Step.Status.CANCELLED).exists()


def test_the_resources_email_links_what_the_completion_gave_and_promises_nothing_else(db):
    from drip.delivery.rendering import render_message

    event = make_event(starts_in=-7200)
    registration = enroll(make_contact(), event)
    complete(event.external_id, "--attended", registration.external_id, "--recording-url", "https://example.com/rec/1")
    message = Message(contact=registration.contact, registration=Registration.objects.get(pk=registration.pk),
                      channel=Channel.EMAIL, template_type="resources")
    rendered = render_message(message)
    assert "https://example.com/rec/1" in rendered.text and "slides" not in rendered.text.lower()
    Event.objects.filter(pk=event.pk).update(recording_url="")
    message.registration = Registration.objects.get(pk=registration.pk)
    bare = render_message(message)
    assert "recording" not in bare.text.lower() and "slides" not in bare.text.lower()
    with pytest.raises(CommandError, match=r"http\(s\) URL"):
        complete(make_event(starts_in=-60).external_id, "--slides-url", "javascript:alert(1)")
