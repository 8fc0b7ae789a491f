"""Consent, read from the history (never a cached flag) and written as new records.

The rule that matters: a revocation that came from the recipient (STOP, unsubscribe) or
their provider (hard bounce, complaint, "opted out") is a suppression. A grant from the API
never lifts it; only the recipient themselves or an operator giving a reason can.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from .models import ConsentRecord, Contact, Message

log = logging.getLogger("drip.consent")
Source = ConsentRecord.Source


# The newest record of a (contact, channel) is its state.
NEWEST_FIRST = ("-created_at", "-id")


def no_consent_reason(channel: str) -> str:
    return f"no {channel} consent"


def latest_record(contact: Contact, channel: str) -> ConsentRecord | None:
    return ConsentRecord.objects.filter(contact=contact, channel=channel).order_by(*NEWEST_FIRST).first()


def has_consent(contact: Contact, channel: str) -> bool:
    record = latest_record(contact, channel)
    return bool(record and record.granted)


class ConsentView:
    """The current consent of many contacts at once, for a batch: one query instead of one
    per message. Read again once older than `max_age` seconds, so a long batch still checks
    consent at (about) send time, as a single send does."""

    def __init__(self, contact_ids: Iterable[int], max_age: float = 1.0) -> None:
        self.contact_ids = set(contact_ids)
        self.max_age = max_age
        self._load()

    def _load(self) -> None:
        # The newest record per (contact, channel) is the state; the history is short, so
        # reading it whole and keeping the first per key is one portable query.
        rows = (
            ConsentRecord.objects.filter(contact_id__in=self.contact_ids)
            .order_by("contact_id", "channel", *NEWEST_FIRST)
            .values_list("contact_id", "channel", "granted")
        )
        latest: dict[tuple[int, str], bool] = {}
        for contact_id, channel, granted in rows:
            latest.setdefault((contact_id, channel), granted)
        self._granted = {key for key, granted in latest.items() if granted}
        self._loaded_at = time.monotonic()

    def granted(self, contact_id: int, channel: str) -> bool:
        if time.monotonic() - self._loaded_at > self.max_age:
            self._load()
        return (contact_id, channel) in self._granted

    def revoked(self, contact_id: int, channel: str) -> None:
        """A revocation this batch just recorded counts for the rest of it at once."""
        self._granted.discard((contact_id, channel))


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
    record = ConsentRecord.objects.create(
        contact=contact, channel=channel, granted=granted, source=source, detail=detail, reason=reason
    )
    if not granted:
        # At once, not at each message's send-time check: a send batch may hold them.
        Message.objects.filter(contact=contact, channel=channel).withdraw(no_consent_reason(channel))
    return record
