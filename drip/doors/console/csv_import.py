"""CSV import: contacts (with consent columns) enrolled into one event, through the same
intake as the API (`event.enrolled` items, drip.doors.intake). A preview lists every row's error
before anything is written; the import itself is one transaction."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from drip.doors.intake.apply import handle_payload
from drip.doors.intake.parse import MAX_EVENTS, parse_event
from drip.models import Contact, Event
from drip.support.errors import FieldError

COLUMNS = ("contact_id", "email", "phone", "first_name", "last_name", "timezone", "email_consent", "sms_consent",
           "registration_id")
REQUIRED = ("email",)
MAX_ROWS = 5000
YES = {"1", "true", "yes", "y", "x", "on"}
NO = {"0", "false", "no", "n", "off"}


@dataclass
class Row:
    line: int
    values: dict[str, str]
    item: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class Plan:
    rows: list[Row]
    errors: list[str] = field(default_factory=list)  # about the file as a whole

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.errors and all(not r.errors for r in self.rows)

    @property
    def error_count(self) -> int:
        return len(self.errors) + sum(1 for r in self.rows if r.errors)


def _consent(value: str, column: str) -> bool | None:
    value = value.strip().lower()
    if not value:
        return None
    if value in YES:
        return True
    if value in NO:
        return False
    raise FieldError(f"{column} must be yes or no (or empty: unchanged), not {value!r}", column)


def _contact_id(values: dict[str, str]) -> str:
    """The column when given; else the contact that already has this email (one person, one
    row); else the email itself."""
    if values.get("contact_id", "").strip():
        return values["contact_id"].strip()
    email = values.get("email", "").strip()
    existing = list(Contact.objects.filter(email__iexact=email).values_list("external_id", flat=True)[:2]) if email else []
    return existing[0] if len(existing) == 1 else email.lower()


def plan(text: str, event: Event) -> Plan:
    """Read and validate every row (with the API's own parser); writes nothing."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    found = Plan([])
    missing = [c for c in REQUIRED if c not in header]
    unknown = [h for h in header if h not in COLUMNS]
    if missing:
        found.errors.append(f"missing column(s): {', '.join(missing)}; the columns are {', '.join(COLUMNS)}")
    if unknown:
        found.errors.append(f"unknown column(s): {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    if found.errors:
        return found
    seen: dict[str, int] = {}
    for n, raw in enumerate(reader, start=2):
        values = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            row = Row(n, values, errors=["more cells than columns"])
            found.rows.append(row)
            continue
        row = Row(n, values)
        found.rows.append(row)
        if len(found.rows) > MAX_ROWS:
            found.errors.append(f"at most {MAX_ROWS} rows per file")
            break
        consent: dict[str, bool | None] = {}
        for column in ("email_consent", "sms_consent"):
            try:
                consent[column] = _consent(values.get(column, ""), column)
            except FieldError as exc:
                row.errors.append(str(exc))
                consent[column] = None
        email_consent, sms_consent = consent["email_consent"], consent["sms_consent"]
        contact_id = _contact_id(values)
        data: dict[str, Any] = {
            "contactId": contact_id, "eventId": event.external_id,
            "registrationId": values.get("registration_id") or f"csv-{event.external_id}-{contact_id}",
            "eventTitle": event.title, "scheduledAt": event.starts_at.isoformat(), "contactEmail": values.get("email", ""),
        }
        for column, key in (("phone", "contactPhone"), ("first_name", "firstName"), ("last_name", "lastName"),
                            ("timezone", "timezone")):
            if values.get(column):
                data[key] = values[column]
        if email_consent is not None:
            data["emailConsent"] = email_consent
        if sms_consent is not None:
            data["smsConsent"] = sms_consent
        item = {"name": "event.enrolled", "data": data}
        try:
            parse_event(item, "")
        except FieldError as exc:
            column = {"data.contactEmail": "email", "data.contactPhone": "phone", "data.firstName": "first_name",
                      "data.lastName": "last_name", "data.timezone": "timezone", "data.contactId": "contact_id",
                      "data.registrationId": "registration_id"}.get(exc.field or "", exc.field or "")
            row.errors.append(f"{column}: {exc}" if column else str(exc))
            continue
        if row.errors:
            continue
        if contact_id in seen:
            row.errors.append(f"the same contact as line {seen[contact_id]} ({contact_id})")
            continue
        seen[contact_id] = n
        row.item = item
    if not found.rows and not found.errors:
        found.errors.append("the file has a header but no rows")
    return found


def import_rows(checked: Plan) -> dict[str, int]:
    """One transaction for the whole file, through drip.doors.intake (as the API would apply it);
    counts of created / matched / reactivated registrations."""
    if not checked.ok:
        raise FieldError("the file has errors; nothing was imported", None)
    with transaction.atomic():
        return import_items(items_of(checked))


def items_of(checked: Plan) -> list[dict[str, Any]]:
    return [r.item for r in checked.rows if r.item is not None]


def import_items(items: list[dict[str, Any]], progress: Callable[[int, int], None] | None = None,
                 chunk: int = MAX_EVENTS) -> dict[str, int]:
    """Validated intake items in chunks of the intake's own batch size, in the caller's
    transaction (the caller makes it one for the whole file); `progress(done, total)` after each."""
    counts: dict[str, int] = {}
    for start in range(0, len(items), chunk):
        for result in handle_payload(items[start:start + chunk])["results"]:
            state = str(result.get("registration", "?"))
            counts[state] = counts.get(state, 0) + 1
        if progress:
            progress(min(start + chunk, len(items)), len(items))
    return counts
