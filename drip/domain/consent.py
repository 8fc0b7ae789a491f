"""Consent: what the contact was granted (ConsentRecord, per contact and channel) and what
their address refuses (Suppression, per address and channel). A message may go only when
both allow it: the latest record is a grant and the address it goes to is not suppressed.

The rule that matters: a suppression belongs to the address (every contact row that holds
it, now or later) and yields only to whoever may lift it (`may_lift`, the one place that
says so): the recipient their own opt-out, an operator with a reason anything, a producer
nothing.
"""
from __future__ import annotations

import enum
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from drip.domain.addresses import address_hash, normalize
from drip.models import AddressKey, Channel, ConsentRecord, Contact, Message, Suppression

log = logging.getLogger("drip.consent")
Source = ConsentRecord.Source
By = Suppression.Source

# The newest record of a (contact, channel) is its state.
NEWEST_FIRST = ("-created_at", "-id")


def no_consent_reason(channel: str) -> str:
    return f"no {channel} consent"


# --- addresses and their suppressions ------------------------------------------------------


@lru_cache(maxsize=1)
def address_key() -> str:
    """The installation's key for address hashes (made by migration 0015; made here if a
    test flushed it). Row 1 only, so two processes racing to make it agree on one."""
    try:
        with transaction.atomic():
            return AddressKey.objects.get_or_create(pk=1, defaults={"key": secrets.token_hex(32)})[0].key
    except IntegrityError:
        return AddressKey.objects.get(pk=1).key


def hash_of(channel: str, address: str) -> str:
    return address_hash(address_key(), channel, address)


def active_suppression(channel: str, address: str) -> Suppression | None:
    if not address.strip():
        return None
    return Suppression.objects.filter(channel=channel, address_hash=hash_of(channel, address), lifted_at__isnull=True).first()


def suppressions_for_contact(contact: Contact) -> list[Suppression]:
    """The active suppressions of the contact's current addresses (what the sender checks)."""
    found = (active_suppression(channel, contact.address_for(channel)) for channel in Channel.values)
    return [s for s in found if s is not None]


def contacts_at(channel: str, address: str) -> list[Contact]:
    """Every contact reached at this address now (in any spelling of it)."""
    if not address.strip():
        return []
    if channel == Channel.EMAIL:
        # iexact narrows by the database's case folding; the normal form decides (IDNA domains).
        wanted = normalize(channel, address)
        local = address.strip().rpartition("@")[0]
        rows = Contact.objects.filter(Q(email__iexact=address.strip()) | Q(email__istartswith=f"{local}@"))
        return [c for c in rows if normalize(channel, c.email) == wanted]
    return list(Contact.objects.filter(phone=normalize(channel, address)))


def suppress(channel: str, address: str, source: str, detail: str, reason: str = "") -> Suppression | None:
    """Refuse this address on this channel from now on, for every contact at it; withdraws
    their unsent messages. A repeat keeps the first row, but a provider's or an operator's
    suppression replaces a recipient's (only an operator may lift those)."""
    if not address.strip():
        return None
    digest = hash_of(channel, address)
    row = {"address": normalize(channel, address), "source": source, "detail": detail[:200], "reason": reason}
    with transaction.atomic():
        existing = Suppression.objects.select_for_update().filter(
            channel=channel, address_hash=digest, lifted_at__isnull=True
        ).first()
        if existing is None:
            try:
                with transaction.atomic():
                    existing = Suppression.objects.create(channel=channel, address_hash=digest, **row)
            except IntegrityError:  # a concurrent report for the same address won
                existing = Suppression.objects.get(channel=channel, address_hash=digest, lifted_at__isnull=True)
        elif existing.source == By.RECIPIENT and source != By.RECIPIENT:
            Suppression.objects.filter(pk=existing.pk).update(**row)
            existing.source, existing.detail, existing.reason = source, row["detail"], reason
        contacts = contacts_at(channel, address)
        if contacts:
            # At once, not at each message's send-time check: a send batch may hold them.
            Message.objects.filter(contact__in=contacts, channel=channel).withdraw_for_revocation(
                no_consent_reason(channel), timezone.now()
            )
    log.info("%s suppression (%s, %s) for suppression=%s, %d contact(s)", channel, source, detail, existing.pk, len(contacts))
    return existing


def may_lift(suppression: Suppression | None, source: str, reason: str = "") -> bool:
    """May `source` (with `reason`) lift this suppression? An operator who says why lifts
    any; the recipient only their own opt-out (never a bounce, complaint or landline); a
    producer's grant (API, CSV) nothing."""
    if suppression is None:
        return True
    if source == Source.ADMIN:
        return bool(reason.strip())
    return source == Source.RECIPIENT and suppression.source == By.RECIPIENT


def lift_suppression(suppression: Suppression, by: str, reason: str, source: str = Source.ADMIN) -> bool:
    """Lift it if `may_lift` allows (conditional: of two lifts one wins). True when lifted."""
    if not may_lift(suppression, source, reason):
        return False
    lifted = Suppression.objects.filter(pk=suppression.pk, lifted_at__isnull=True).update(
        lifted_at=timezone.now(), lifted_by=by[:150], lift_reason=reason
    )
    log.info("suppression=%s lifted by %s (%s)", suppression.pk, source, by)
    return bool(lifted)


def lift_for_recipient(channel: str, address: str, detail: str) -> bool:
    """The recipient's own undo (START from that number, the page's re-subscribe): lifts a
    recipient opt-out only; consent is then what it was before it (nobody's grant is made)."""
    current = active_suppression(channel, address)
    return current is not None and lift_suppression(current, detail, detail, source=Source.RECIPIENT)


# --- the contact's grants --------------------------------------------------------------------


def latest_record(contact: Contact, channel: str) -> ConsentRecord | None:
    return ConsentRecord.objects.filter(contact=contact, channel=channel).order_by(*NEWEST_FIRST).first()


def has_consent(contact: Contact, channel: str) -> bool:
    record = latest_record(contact, channel)
    return bool(record and record.granted) and active_suppression(channel, contact.address_for(channel)) is None


class Outcome(enum.Enum):
    RECORDED = "recorded"
    UNCHANGED = "unchanged"  # the same state was already in force
    REFUSED = "refused"  # a grant that a suppression outlives


@dataclass(frozen=True)
class ConsentChange:
    """What `record_consent` did: callers never need to read the history again."""

    outcome: Outcome
    current: ConsentRecord | None
    suppression: Suppression | None = None  # what refused the grant

    @property
    def recorded(self) -> bool:
        return self.outcome is Outcome.RECORDED

    @property
    def granted(self) -> bool:
        return self.outcome is not Outcome.REFUSED and bool(self.current and self.current.granted)

    def refusal(self) -> str:
        """Why a grant was refused, for the producer ("" when it was not)."""
        return refusal(self.suppression) if self.outcome is Outcome.REFUSED and self.suppression else ""


def refusal(suppression: Suppression) -> str:
    return f"suppressed by the {suppression.source} ({suppression.detail})"


def record_consent(
    contact: Contact, channel: str, granted: bool, source: str, detail: str = "", reason: str = ""
) -> ConsentChange:
    """Record a grant or revocation, unless the same state is already in force or the
    address's suppression refuses the grant (an operator's grant with a reason lifts it).
    A revocation withdraws the contact's unsent messages on that channel at once; one from
    the recipient or their provider is a suppression of the address, not of this row."""
    current = latest_record(contact, channel)
    if not granted and source in (Source.RECIPIENT, Source.PROVIDER):
        suppression = suppress(channel, contact.address_for(channel), source, detail, reason)
        return ConsentChange(Outcome.RECORDED if suppression else Outcome.UNCHANGED, current, suppression)
    if granted:
        blocking = active_suppression(channel, contact.address_for(channel))
        if blocking is not None:
            if not may_lift(blocking, source, reason):
                log.info("consent grant refused contact=%s channel=%s source=%s: %s", contact.pk, channel, source,
                         refusal(blocking))
                return ConsentChange(Outcome.REFUSED, current, blocking)
            lift_suppression(blocking, detail or source, reason, source)
    if current is not None and current.granted == granted:
        return ConsentChange(Outcome.UNCHANGED, current)
    record = ConsentRecord.objects.create(
        contact=contact, channel=channel, granted=granted, source=source, detail=detail, reason=reason
    )
    if not granted:
        Message.objects.filter(contact=contact, channel=channel).withdraw_for_revocation(no_consent_reason(channel), timezone.now())
    return ConsentChange(Outcome.RECORDED, record)


class ConsentView:
    """The consent of many contacts at once, for a batch: two queries instead of two per
    message. Read again once older than `max_age` seconds, so a long batch still checks
    consent at (about) send time, as a single send does. The address checked is the one
    the contact row holds when asked: the one the sender is about to use."""

    def __init__(self, contacts: Iterable[Contact], max_age: float = 1.0) -> None:
        self.contacts = {c.pk: c for c in contacts}
        self.max_age = max_age
        self._hashes: dict[tuple[str, str], str] = {}
        self._load()

    def _hash(self, channel: str, address: str) -> str:
        key = (channel, address)
        if key not in self._hashes:
            self._hashes[key] = hash_of(channel, address)
        return self._hashes[key]

    def _load(self) -> None:
        # The newest record per (contact, channel) is the state; the history is short, so
        # reading it whole and keeping the first per key is one portable query.
        rows = (
            ConsentRecord.objects.filter(contact_id__in=list(self.contacts))
            .order_by("contact_id", "channel", *NEWEST_FIRST)
            .values_list("contact_id", "channel", "granted")
        )
        latest: dict[tuple[int, str], bool] = {}
        for contact_id, channel, granted in rows:
            latest.setdefault((contact_id, channel), granted)
        self._granted = {key for key, granted in latest.items() if granted}
        wanted = {
            self._hash(channel, c.address_for(channel))
            for c in self.contacts.values() for channel in Channel.values if c.address_for(channel)
        }
        self._suppressed = set(
            Suppression.objects.filter(address_hash__in=wanted, lifted_at__isnull=True).values_list("channel", "address_hash")
        ) if wanted else set()
        self._loaded_at = time.monotonic()

    def granted(self, contact: Contact, channel: str) -> bool:
        if time.monotonic() - self._loaded_at > self.max_age:
            self._load()
        if (contact.pk, channel) not in self._granted:
            return False
        address = contact.address_for(channel)
        return not address or (channel, self._hash(channel, address)) not in self._suppressed

    def suppressed(self, channel: str, address: str) -> None:
        """A suppression this batch just recorded counts for the rest of it at once."""
        self._suppressed.add((channel, self._hash(channel, address)))
