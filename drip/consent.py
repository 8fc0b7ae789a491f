"""Consent, read from the history (never a cached flag) and written as new records.

The rule that matters: a revocation that came from the recipient (STOP, unsubscribe) or
their provider (hard bounce, complaint, "opted out") is a suppression. A grant from the API
never lifts it; only the recipient themselves or an operator giving a reason can.
"""
from __future__ import annotations

import logging

from .models import ConsentRecord, Contact

log = logging.getLogger("drip.consent")
Source = ConsentRecord.Source


def latest_record(contact: Contact, channel: str) -> ConsentRecord | None:
    return ConsentRecord.objects.filter(contact=contact, channel=channel).order_by("-created_at", "-id").first()


def has_consent(contact: Contact, channel: str) -> bool:
    record = latest_record(contact, channel)
    return bool(record and record.granted)


def record_consent(
    contact: Contact, channel: str, granted: bool, source: str, detail: str = "", reason: str = ""
) -> ConsentRecord | None:
    """Record a grant or revocation. Returns the new record, or None when nothing changed
    (same state already) or when a grant was refused because of a suppression."""
    current = latest_record(contact, channel)
    if current is not None and current.granted == granted:
        return None
    if granted and current is not None and current.is_suppression:
        may_lift = source == Source.RECIPIENT or (source == Source.ADMIN and reason.strip())
        if not may_lift:
            log.info(
                "consent grant refused contact=%s channel=%s source=%s: suppressed by %s (%s)",
                contact.pk, channel, source, current.source, current.detail,
            )
            return None
    return ConsentRecord.objects.create(
        contact=contact, channel=channel, granted=granted, source=source, detail=detail, reason=reason
    )
