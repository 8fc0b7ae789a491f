"""Applying a provider's report (email or SMS) to a Message: stored once, applied only
forwards, and a suppression recorded for the address when the report says so.

Receivers are fast: nothing here calls a provider, and every write is one conditional
UPDATE, so a report racing the sender (or another report) never undoes its work.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from drip.domain.addresses import normalize
from drip.domain.consent import suppress
from drip.models import DeliveryReport, Message, Suppression

log = logging.getLogger("drip.inbound")
Kind = DeliveryReport.Kind
Status = Message.Status

PAYLOAD_LIMIT = 4096  # characters of the provider's payload kept with each report
DETAIL_LIMIT = 1000

# Where a report may move a Message, and from which statuses only: a Message never moves
# backwards (a late "sent" after "delivered", a "failed" after "delivered"). A message still
# "sending" belongs to its sender, whose own conditional write comes next.
FORWARD: dict[str, tuple[str, frozenset[str]]] = {
    Kind.DELIVERED: (Status.DELIVERED, frozenset({Status.SENT})),
    Kind.BOUNCED: (Status.BOUNCED, frozenset({Status.SENT})),
    Kind.REJECTED: (Status.FAILED, frozenset({Status.SENT})),
    Kind.FAILED: (Status.FAILED, frozenset({Status.SENT})),
    Kind.UNDELIVERED: (Status.FAILED, frozenset({Status.SENT})),
}
# The first open / click only: later ones are report rows, not Message changes.
FIRST_TIME: dict[str, str] = {Kind.OPENED: "opened_at", Kind.CLICKED: "clicked_at"}


@dataclass(frozen=True)
class Report:
    """A provider's report, normalized: what `record_report` needs and nothing else."""

    channel: str
    kind: str
    provider: str  # "postmark", "twilio", ...
    occurred_at: datetime
    event_id: str = ""  # the provider's own id for this report, when it gives one
    detail: str = ""
    payload: Any = None
    # Suppress the address (source provider), with this consent-record detail.
    suppress: str = ""
    address: str = ""  # the address the report is about; the Message's own when empty
    dedupe_key: str = ""  # overrides the default (provider event id, else kind+message+time)


def trimmed_payload(payload: Any) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str, ensure_ascii=False)
    return text[:PAYLOAD_LIMIT]


def dedupe_key(message: Message, report: Report) -> str:
    if report.dedupe_key:
        return report.dedupe_key[:300]
    if report.event_id:
        return f"{report.provider}:id:{report.event_id}"[:300]
    # No event id (Postmark's delivery, open and click have none): the same kind for the
    # same message at the same instant is the same report sent again.
    digest = hashlib.sha256(trimmed_payload(report.payload).encode()).hexdigest()[:16]
    return f"{report.provider}:{message.pk}:{report.kind}:{report.occurred_at.isoformat()}:{digest}"[:300]


def record_report(message: Message, report: Report) -> DeliveryReport | None:
    """Store the report and apply it; None (and nothing changed) when it is a repeat."""
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: the duplicate's failure stays here
                row = DeliveryReport.objects.create(
                    message=message, channel=report.channel, kind=report.kind, occurred_at=report.occurred_at,
                    provider=report.provider, provider_event_id=report.event_id[:200],
                    dedupe_key=dedupe_key(message, report), detail=report.detail[:DETAIL_LIMIT],
                    payload=trimmed_payload(report.payload),
                )
        except IntegrityError:
            log.info("repeated %s report for message %s ignored", report.kind, message.pk)
            return None
        if apply_report(message, report):
            DeliveryReport.objects.filter(pk=row.pk).update(applied=True)
            row.applied = True
        if report.suppress:
            _suppress(message, report)
    log.info(
        "%s report for message %s (%s)%s%s", report.kind, message.pk, report.provider,
        "" if row.applied else ", recorded only", f", suppressed {report.channel}" if report.suppress else "",
    )
    return row


def apply_report(message: Message, report: Report) -> bool:
    """Move the Message forwards if the report allows it; True when it changed."""
    rows = Message.objects.filter(pk=message.pk)
    if report.kind in FIRST_TIME:
        return bool(rows.mark_first(FIRST_TIME[report.kind], report.occurred_at))
    if report.kind not in FORWARD:
        return False
    status, sources = FORWARD[report.kind]
    fields: dict[str, Any] = {}
    if status == Status.DELIVERED:
        fields["delivered_at"] = report.occurred_at
    else:
        fields["error"] = f"{report.kind}: {report.detail}" if report.detail else report.kind
        if status == Status.FAILED:
            fields["error_class"] = Message.ErrorClass.DELIVERY_REPORT
    if rows.advance(status, sources, **fields):
        return True
    if status == Status.DELIVERED:
        # Delivered before the sender recorded its own "sent": keep the time, leave the
        # status to the sender (its claim must still match).
        return bool(rows.filter(status=Status.SENDING, delivered_at__isnull=True).update(delivered_at=report.occurred_at))
    return False


def _suppress(message: Message, report: Report) -> None:
    """The ESP is the authority on its own reports: the address the report names is
    suppressed (the message's own when the report names none)."""
    address = report.address or message.to or message.contact.address_for(report.channel)
    if report.address and message.to and normalize(report.channel, report.address) != normalize(report.channel, message.to):
        log.warning("%s report for message %s names another recipient than the message's; suppressing the report's",
                    report.kind, message.pk)
    suppress(report.channel, address, Suppression.Source.PROVIDER, detail=report.suppress, reason=report.detail[:DETAIL_LIMIT])


def events_for(message: Message) -> list[dict[str, Any]]:
    """The reports received for a message, oldest first, for the status API's `events`."""
    return [
        {"kind": r.kind, "at": r.occurred_at, "detail": r.detail}
        for r in DeliveryReport.objects.filter(message=message).order_by("occurred_at", "id")
    ]
