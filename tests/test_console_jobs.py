"""Large console work as a Celery task with a progress page: a CSV import over
DRIP_IMPORT_INLINE_ROWS, completing an event over DRIP_COMPLETE_INLINE_REGISTRATIONS. Real
worker thread on the real broker, real database."""
from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model

from drip.doors.console import csv_import, jobs
from drip.models import ConsoleJob, Contact, Event, Message, Registration, Step
from drip.timer.publish import enqueue_console_job
from tests.factories import enroll, make_contact, make_event
from tests.helpers import wait_until


@pytest.fixture
def operator(client, db):
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def small_jobs(settings, monkeypatch):
    """Thresholds lowered, and progress reported every 10 rows, so 30 rows go through a job."""
    settings.DRIP_IMPORT_INLINE_ROWS = 5
    settings.DRIP_COMPLETE_INLINE_REGISTRATIONS = 1
    monkeypatch.setattr(jobs, "CHUNK", 10)
    return settings


def people(n: int, bad_line: int | None = None) -> str:
    rows = ["email,first_name,timezone,email_consent,sms_consent"]
    for i in range(n):
        email = "not-an-email" if bad_line == i + 2 else f"p{i}@example.com"
        rows.append(f"{email},P{i},Europe/Paris,yes,no")
    return "\n".join(rows) + "\n"


def check_then_import(client, event, csv_text: str):
    from django.core.files.uploadedfile import SimpleUploadedFile
    preview = client.post("/admin/drip/contact/import/", {
        "event": event.pk, "file": SimpleUploadedFile("people.csv", csv_text.encode(), content_type="text/csv"),
    })
    return preview, client.post("/admin/drip/contact/import/", {"event": event.pk, "csv_text": csv_text, "confirm": "1"})


def finished(job: ConsoleJob) -> ConsoleJob:
    wait_until(lambda: ConsoleJob.objects.get(pk=job.pk).finished, timeout=30)
    job.refresh_from_db()
    return job


def test_a_large_csv_imports_through_a_task_with_its_progress(worker, operator, small_jobs):
    event = make_event()
    preview, confirmed = check_then_import(operator, event, people(30))
    assert "All 30 row(s) are valid" in preview.content.decode()
    job = ConsoleJob.objects.get()
    assert confirmed.status_code == 302 and confirmed["Location"] == f"/admin/drip/consolejob/{job.pk}/progress/"
    assert (job.kind, job.total, job.event_id, job.created_by.username) == ("import", 30, event.pk, "op")
    job = finished(job)
    assert (job.status, job.done, job.total, job.error) == ("done", 30, 30, "")
    assert job.result == {"registrations": {"created": 30}} and jobs.progress(job) == 30
    page = operator.get(confirmed["Location"]).content.decode()
    assert "30 / 30" in page and "Imported 30 row(s): 30 created" in page and 'http-equiv="refresh"' not in page
    assert Registration.objects.filter(event=event).count() == 30
    assert Step.objects.filter(registration__event=event, key="welcome").count() == 30


def test_the_progress_page_refreshes_itself_until_the_job_is_done(operator):
    event = make_event()
    job = ConsoleJob.objects.create(kind=ConsoleJob.Kind.IMPORT, event=event, total=40, payload={"items": []})
    jobs.report(job.pk, 20)  # what a running task reports after its second chunk
    ConsoleJob.objects.filter(pk=job.pk).update(status=ConsoleJob.Status.RUNNING)
    page = operator.get(f"/admin/drip/consolejob/{job.pk}/progress/").content.decode()
    assert '<meta http-equiv="refresh" content="1">' in page and "20 / 40" in page and "(50 %)" in page
    assert "20 / 40" in operator.get("/admin/drip/consolejob/").content.decode()


def test_a_bad_row_still_blocks_a_large_import_at_the_preview(operator, small_jobs):
    event = make_event()
    preview, confirmed = check_then_import(operator, event, people(30, bad_line=17))
    page = preview.content.decode()
    assert "1 row(s) have errors" in page and 'name="confirm"' not in page
    assert confirmed.status_code == 200 and "1 row(s) have errors" in confirmed.content.decode()  # forced: refused again
    assert not ConsoleJob.objects.exists() and not Registration.objects.exists()


def test_an_import_job_run_twice_imports_once(worker, operator, small_jobs):
    event = make_event()
    check_then_import(operator, event, people(25))
    job = ConsoleJob.objects.get()
    enqueue_console_job(job.pk)  # a second delivery, racing the first
    job = finished(job)
    assert jobs.run_job(job.pk) is False  # and a third, after it finished
    enqueue_console_job(job.pk)
    time.sleep(1)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.done) == ("done", 1, 25)
    assert Registration.objects.filter(event=event).count() == 25
    assert Step.objects.filter(registration__event=event, key="welcome").count() == 25


def test_a_job_that_fails_half_way_writes_nothing_and_says_why(worker, small_jobs):
    event = make_event()
    items = csv_import.items_of(csv_import.plan(people(15), event))
    # Valid at the preview; by the time the task runs, line 14 names a registration that
    # belongs to someone else: the second chunk fails after the first was applied.
    make_contact(external_id="someone-else")
    items[12]["data"]["registrationId"] = enroll(Contact.objects.get(external_id="someone-else"), make_event()).external_id
    job = finished(jobs.start_import(event, items, None))
    assert job.status == "failed" and job.error.startswith("nothing was written:") and "belongs to another" in job.error
    assert not Registration.objects.filter(event=event).exists()
    assert not Contact.objects.filter(email="p0@example.com").exists()


def past_event_with(n: int) -> tuple[Event, list[Registration]]:
    event = make_event(starts_in=-3600)
    registrations = [enroll(make_contact(sms_consent=False), event) for _ in range(n)]
    return event, registrations


def test_completing_a_large_event_runs_as_a_task_with_a_progress_page(worker, operator, small_jobs):
    event, registrations = past_event_with(3)
    action = {"action": "complete_event", "_selected_action": [event.pk], "apply": "1",
              "attended": [registrations[0].pk]}
    response = operator.post("/admin/drip/event/", action)
    job = ConsoleJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/admin/drip/consolejob/{job.pk}/progress/"
    job = finished(job)
    assert (job.kind, job.status, job.done, job.total) == ("complete", "done", 3, 3)
    page = operator.get(response["Location"]).content.decode()
    assert "1 attended, 2 no-show, 9 post-event steps planned" in page
    event.refresh_from_db()
    assert event.status == Event.Status.COMPLETED
    planned = Step.objects.filter(registration__event=event, funnel__startswith="post").count()
    assert planned == 9
    # Idempotent: the job again, and the action again, plan nothing new.
    assert jobs.run_job(job.pk) is False
    again = operator.post("/admin/drip/event/", action, follow=True).content.decode()
    assert "was already completed; nothing planned" in again
    assert ConsoleJob.objects.count() == 1
    assert Step.objects.filter(registration__event=event, funnel__startswith="post").count() == planned


def test_a_large_completion_the_service_would_refuse_is_refused_before_queueing(operator, small_jobs):
    event = make_event(starts_in=3 * 86400)
    for _ in range(3):
        enroll(make_contact(), event)
    page = operator.post("/admin/drip/event/", {"action": "complete_event", "_selected_action": [event.pk], "apply": "1"},
                         follow=True).content.decode()
    assert "Not completed" in page and "completedAt" in page
    assert not ConsoleJob.objects.exists()
    assert not Message.objects.filter(template_type="thank_you").exists()
