"""python manage.py complete_event <event id> [--attended ID ...] [--attended-csv FILE]
[--completed-at ISO] [--dry-run]"""
from __future__ import annotations

import csv
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_datetime

from drip.domain.validation import validate_http_url
from drip.engine.services import CompletionSummary, complete_event, resolve_attendees
from drip.models import Event
from drip.support.errors import FieldError
from drip.support.logs import audit, shell_user

HEADERS = {"registration_id", "registrationid", "registration", "id", "email", "contact_email", "contactemail"}


def read_attendance_csv(path: str) -> tuple[list[str], list[str]]:
    """(registration ids, emails) from a one-column CSV; a header row is allowed."""
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--attended-csv: no such file: {path}")
    try:
        rows = list(csv.reader(file.read_text(encoding="utf-8-sig").splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"--attended-csv: {path} is not a readable UTF-8 CSV file ({exc})") from None
    rows = [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)]
    if rows and rows[0][0].lower().replace(" ", "_") in HEADERS:
        rows = rows[1:]
    if not rows:
        raise CommandError(f"--attended-csv: {path} lists no registration id or email")
    wide = [n for n, row in enumerate(rows, 1) if len([c for c in row if c]) > 1]
    if wide:
        raise CommandError(f"--attended-csv: expected one column (registration id or email); row {wide[0]} has more")
    values = [row[0] for row in rows]
    return [v for v in values if "@" not in v], [v for v in values if "@" in v]


def check_url(name: str, value: str) -> str:
    """The API's rule for URLs (drip.domain.validation): http(s), no user info, no control characters."""
    try:
        validate_http_url(value)
    except ValidationError as exc:
        raise CommandError(f"--{name.replace('_', '-')}: {value!r} {exc.messages[0]}") from None
    return value


def parse_completed_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(f"--completed-at: {value!r} is not an ISO 8601 date and time")
    if parsed.tzinfo is None:
        raise CommandError(f"--completed-at: {value!r} has no UTC offset (e.g. 2026-12-01T17:00:00+00:00)")
    return parsed


class Command(BaseCommand):
    help = "Mark attendance, complete an event and start the post-event funnel."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event_id", help="the event's external id")
        parser.add_argument("--attended", nargs="+", default=[], metavar="REGISTRATION_ID")
        parser.add_argument("--attended-csv", metavar="FILE", help="one column of registration ids or contact emails")
        parser.add_argument("--completed-at", metavar="ISO", help="when the event ended (default: now)")
        parser.add_argument("--dry-run", action="store_true", help="print what would be planned; write nothing")
        parser.add_argument("--force", action="store_true", help="complete even before the scheduled start")
        parser.add_argument("--recording-url", metavar="URL", help="linked from the post-event emails")
        parser.add_argument("--slides-url", metavar="URL", help="linked from the post-event emails")

    def handle(self, *args: Any, **options: Any) -> None:
        event = Event.objects.filter(external_id=options["event_id"]).first()
        if event is None:
            raise CommandError(f"unknown event id: {options['event_id']}")
        completed_at = parse_completed_at(options["completed_at"])
        ids: list[str] = list(options["attended"])
        emails: list[str] = []
        if options["attended_csv"]:
            csv_ids, emails = read_attendance_csv(options["attended_csv"])
            ids += csv_ids
        try:
            attended = resolve_attendees(event, ids, emails)
            links = {"recording_url": options["recording_url"], "slides_url": options["slides_url"]}
            summary = complete_event(
                event, attended, completed_at, options["dry_run"], progress=self._progress, force=options["force"],
                links={k: check_url(k, v) for k, v in links.items() if v},
            )
        except FieldError as exc:
            raise CommandError(str(exc)) from None
        if summary.already_completed:
            raise CommandError(
                f"event {event.external_id} was already completed at {summary.completed_at.isoformat()}; nothing planned"
            )
        if not summary.dry_run:
            audit.info(
                "complete_event: OS user %s: completed event %s (attended %d, no-show %d, %d post-event step(s) planned)",
                shell_user(), event.external_id, summary.branches["attended"], summary.branches["no_show"], summary.steps_planned,
            )
        self.stdout.write(format_summary(event, summary))

    def _progress(self, done: int, total: int) -> None:
        if total >= 10_000:
            sys.stderr.write(f"\rplanned {done:,}/{total:,} registrations")
            if done == total:
                sys.stderr.write("\n")


def format_summary(event: Event, summary: CompletionSummary) -> str:
    head = "DRY RUN, nothing written: would complete" if summary.dry_run else "Completed"
    first = summary.first_due.isoformat() if summary.first_due else "-"
    return "\n".join([
        f"{head} {event.external_id} ({event.title}) at {summary.completed_at.isoformat()}",
        f"  attended: {summary.branches['attended']} registration(s)",
        f"  no-show:  {summary.branches['no_show']} registration(s)",
        f"  post-event steps planned: {summary.steps_planned} (first due {first})",
        f"  pre-event steps cancelled: {summary.pre_event_cancelled}",
    ])
