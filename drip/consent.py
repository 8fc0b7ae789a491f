"""Consent, read from the history (never a cached flag) and written as new records.

The rule that matters: a revocation that came from the recipient (STOP, unsubscribe) or
their provider (hard bounce, complaint, "opted out") is a suppression. A grant from the API
never lifts it; only the recipient themselves or an operator giving a reason can
(`may_lift`, the one place that says so).
"""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.utils import timezone

from .models import Channel, ConsentRecord, Contact, Message

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


def may_lift(current: ConsentRecord | None, source: str, reason: str = "") -> bool:
    """May a grant from `source` (with `reason`) replace the `current` record? Anyone may
    grant over a plain revocation; a suppression yields only to the recipient, or to an
    operator who says why."""
    if current is None or not current.is_suppression:
        return True
    return source == Source.RECIPIENT or (source == Source.ADMIN and bool(reason.strip()))


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


class Outcome(enum.Enum):
    RECORDED = "recorded"
    UNCHANGED = "unchanged"  # the same state was already in force
    REFUSED = "refused"  # a grant that a suppression outlives


@dataclass(frozen=True)
class ConsentChange:
    """What `record_consent` did, and the record in force afterwards: callers never need to
    read the history again to learn the outcome."""

    outcome: Outcome
    current: ConsentRecord | None

    @property
    def recorded(self) -> bool:
        return self.outcome is Outcome.RECORDED

    @property
    def granted(self) -> bool:
        return bool(self.current and self.current.granted)

    def refusal(self) -> str:
        """Why a grant was refused, for the producer ("" when it was not)."""
        if self.outcome is not Outcome.REFUSED or self.current is None:
            return ""
        return f"suppressed by the {self.current.source} ({self.current.detail})"


def record_consent(
    contact: Contact, channel: str, granted: bool, source: str, detail: str = "", reason: str = ""
) -> ConsentChange:
    """Record a grant or revocation, unless the same state is already in force or a
    suppression refuses the grant. A revocation withdraws the contact's unsent messages on
    that channel at once."""
    current = latest_record(contact, channel)
    if current is not None and current.granted == granted:
        return ConsentChange(Outcome.UNCHANGED, current)
    if granted and not may_lift(current, source, reason):
        assert current is not None  # may_lift allows every grant when nothing is recorded
        log.info(
            "consent grant refused contact=%s channel=%s source=%s: suppressed by %s (%s)",
            contact.pk, channel, source, current.source, current.detail,
        )
        return ConsentChange(Outcome.REFUSED, current)
    record = ConsentRecord.objects.create(
        contact=contact, channel=channel, granted=granted, source=source, detail=detail, reason=reason
    )
    if not granted:
        # At once, not at each message's send-time check: a send batch may hold them.
        Message.objects.filter(contact=contact, channel=channel).withdraw_for_revocation(no_consent_reason(channel), timezone.now())
    return ConsentChange(Outcome.RECORDED, record)


def contacts_at(channel: str, address: str) -> list[Contact]:
    """Every contact reached at this address: a suppression belongs to the address (an
    unsubscribe, bounce or complaint for an email; a STOP for a number), not to one row."""
    if not address:
        return []
    if channel == Channel.EMAIL:
        return list(Contact.objects.filter(email__iexact=address.strip()))
    return list(Contact.objects.filter(phone=address.strip()))


def record_for_address(
    channel: str, address: str, granted: bool, source: str, detail: str = "", reason: str = ""
) -> list[ConsentChange]:
    """`record_consent` for every contact at the address (a STOP, an unsubscribe, a bounce;
    and the recipient's own START or re-subscription)."""
    return [record_consent(c, channel, granted, source, detail, reason) for c in contacts_at(channel, address)]
