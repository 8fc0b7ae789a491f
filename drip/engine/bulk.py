"""Enrollments applied set-based: a list of `event.enrolled` in a constant number of statements.

The one enrollment path (the API, `send_event`, the CSV import): for each item, upsert the
contact, record consent, upsert the event, check and create the registration, plan its
pre-event funnel; for a whole list: everything the list names is read in five queries, the items are then applied in
order to that state in memory (so a contact or an event named twice behaves as applying the
items one after the other would), and what changed is written at the end, a statement per
table (new rows with bulk_create, changed ones with bulk_update, a revocation's unsent
messages withdrawn with one update per channel, every new registration's steps through
drip.timer.scheduler.schedule_steps, which inserts them and claims the welcome steps in batches).

Two rare cases go through the per-item services, after writing what came before them: an
event whose start changes (services.reschedule, once per change) and a cancelled
registration enrolled again (services.enroll reactivates it). Errors name the item's field
with the same messages as the services. Runs in the caller's transaction.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from drip.domain.consent import NEWEST_FIRST, hash_of, may_lift, no_consent_reason, refusal
from drip.engine import services
from drip.engine.planning import enrollment_steps, step_insert_select
from drip.models import Channel, ConsentRecord, Contact, Event, Message, Registration, Step, Suppression
from drip.support.errors import FieldError, shown
from drip.support.rows import insert_rows
from drip.timer.publish import batches
from drip.timer.scheduler import claim_soon, schedule_steps, step_horizon

log = logging.getLogger("drip.bulk")
CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "timezone")
SOURCE = ConsentRecord.Source.API
DETAIL = "api:event.enrolled"
BATCH = 5000  # ids per statement: SQLite caps the parameters of one
EVENT_FIELDS = {"title": "eventTitle", "join_url": "joinUrl"}  # as the producer names them


class Wanted(Protocol):
    """One enrollment as parsed (drip.doors.intake.schema.Enrollment has these attributes)."""

    @property
    def contact_id(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def registration_id(self) -> str: ...
    @property
    def event_title(self) -> str: ...
    @property
    def scheduled_at(self) -> datetime: ...
    @property
    def contact_email(self) -> str: ...
    @property
    def contact_phone(self) -> str | None: ...
    @property
    def first_name(self) -> str | None: ...
    @property
    def last_name(self) -> str | None: ...
    @property
    def timezone(self) -> str | None: ...
    @property
    def join_url(self) -> str | None: ...
    @property
    def registrant_join_url(self) -> str | None: ...
    @property
    def email_consent(self) -> bool | None: ...
    @property
    def sms_consent(self) -> bool | None: ...


@dataclass
class Enrolled:
    """What one item did ("created", "matched"...), for the producer's answer."""

    contact_id: str
    event_id: str
    registration_id: str
    contact: str
    event: str
    registration: str
    event_status: str
    registration_status: str
    consent: dict[str, bool]
    refused: dict[str, str]
    steps_planned: int = 0
    rescheduled: services.Rescheduled | None = None  # the event's start moved with this item
    event_updated: list[str] = field(default_factory=list)  # the event's fields this item changed (camelCase)


@dataclass
class _Registration:
    external_id: str
    contact: str  # external ids: rows not written yet take part too
    event: str
    status: str
    pk: int | None = None
    join_url: str = ""


@dataclass
class _Pending:
    """What the items applied so far changed and the database does not know yet."""

    contacts: list[Contact] = field(default_factory=list)
    contact_changes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    events: list[Event] = field(default_factory=list)
    event_changes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # (contact external id, channel, granted, when): rows, not instances (drip.support.rows).
    consents: list[tuple[str, str, bool, datetime]] = field(default_factory=list)
    revoked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    registrations: list[tuple[_Registration, Enrolled]] = field(default_factory=list)
    # Registrations that exist and got a new join link of their own.
    join_urls: dict[int, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.contacts or self.contact_changes or self.events or self.event_changes or self.consents
            or self.revoked or self.registrations or self.join_urls
        )


def enroll_all(items: Sequence[tuple[str, Wanted]]) -> list[Enrolled]:
    """Apply the enrollments in order; `items` are (path prefix, data), the prefix naming the
    item in errors ("[3].data."). Raises FieldError at the first refused item."""
    return _Run(items).apply()


class _Run:
    def __init__(self, items: Sequence[tuple[str, Wanted]]) -> None:
        self.items = items
        self.pending = _Pending()
        self.contacts: dict[str, Contact] = {}
        self.events: dict[str, Event] = {}
        self.by_id: dict[str, _Registration] = {}
        self.by_pair: dict[tuple[str, str], _Registration] = {}
        # Whether the record in force per (contact, channel) is a grant.
        self.latest: dict[tuple[str, str], bool] = {}
        # The active suppressions of every address the list names or its contacts hold.
        self.suppressions: dict[tuple[str, str], Suppression] = {}

    # --- reading: five queries ---------------------------------------------------------

    def _load(self) -> None:
        wanted = [d for _, d in self.items]
        self.contacts = {c.external_id: c for c in Contact.objects.filter(external_id__in={d.contact_id for d in wanted})}
        # Locked, as the per-item path locks each: producers changing one event apply in turn.
        self.events = {
            e.external_id: e
            for e in Event.objects.select_for_update().filter(external_id__in={d.event_id for d in wanted}).order_by("pk")
        }
        contact_pks = {c.pk: c.external_id for c in self.contacts.values()}
        event_pks = {e.pk: e.external_id for e in self.events.values()}
        rows = (
            Registration.objects.select_for_update(of=("self",))
            .filter(
                Q(external_id__in={d.registration_id for d in wanted})
                | Q(contact_id__in=list(contact_pks), event_id__in=list(event_pks))
            )
            .order_by("pk")
            .values_list("pk", "external_id", "status", "contact__external_id", "event__external_id", "join_url")
        )
        for pk, external_id, status, contact, event, join_url in rows:
            registration = _Registration(external_id, contact, event, status, pk, join_url)
            self.by_id[external_id] = registration
            self.by_pair[(contact, event)] = registration
        # The newest record per (contact, channel) is the consent in force (drip.domain.consent.ConsentView).
        records = (
            ConsentRecord.objects.filter(contact_id__in=list(contact_pks))
            .order_by("contact_id", "channel", *NEWEST_FIRST)
            .values_list("contact_id", "channel", "granted")
        )
        for contact_pk, channel, granted in records:
            self.latest.setdefault((contact_pks[contact_pk], channel), granted)
        addresses: set[tuple[str, str]] = {(Channel.EMAIL, d.contact_email) for d in wanted}
        addresses |= {(Channel.SMS, d.contact_phone or "") for d in wanted}
        addresses |= {(ch, c.address_for(ch)) for c in self.contacts.values() for ch in Channel.values}
        hashes = sorted({hash_of(ch, a) for ch, a in addresses if a})
        for batch in (hashes[i : i + BATCH] for i in range(0, len(hashes), BATCH)):
            for suppression in Suppression.objects.filter(address_hash__in=batch, lifted_at__isnull=True):
                self.suppressions[(suppression.channel, suppression.address_hash)] = suppression

    # --- applying, in order, in memory -----------------------------------------------

    def apply(self) -> list[Enrolled]:
        self._load()
        done = [self._one(at, d) for at, d in self.items]
        self._flush()
        return done

    def _one(self, at: str, d: Wanted) -> Enrolled:
        contact_state = self._contact(d)
        consent, refused = self._consent(d)
        updated: list[str] = []
        event_state, rescheduled = self._event(at, d, updated)
        registration, registration_state, planned = self._registration(at, d)
        outcome = Enrolled(
            d.contact_id, d.event_id, registration.external_id, contact_state, event_state, registration_state,
            self.events[d.event_id].status, registration.status, consent, refused, planned, rescheduled, updated,
        )
        if registration_state == "created":
            self.pending.registrations.append((registration, outcome))  # its steps are counted when planned
        return outcome

    def _contact(self, d: Wanted) -> str:
        given = {
            "email": d.contact_email, "phone": d.contact_phone, "first_name": d.first_name,
            "last_name": d.last_name, "timezone": d.timezone,
        }
        given = {k: v for k, v in given.items() if v is not None}
        contact = self.contacts.get(d.contact_id)
        if contact is None:
            contact = Contact(external_id=d.contact_id, **given)
            self.contacts[d.contact_id] = contact
            self.pending.contacts.append(contact)
            return "created"
        changed = [k for k, v in given.items() if getattr(contact, k) != v]
        for name in changed:
            setattr(contact, name, given[name])
        if changed and contact.pk is not None:
            self.pending.contact_changes[d.contact_id].update(changed)
        return "updated" if changed else "matched"

    def _consent(self, d: Wanted) -> tuple[dict[str, bool], dict[str, str]]:
        """drip.domain.consent.record_consent's rule, for each channel the item names: a producer's
        grant never lifts the suppression of the address the contact now holds."""
        refused: dict[str, str] = {}
        contact = self.contacts[d.contact_id]
        channel: str
        for channel, wanted in ((Channel.EMAIL, d.email_consent), (Channel.SMS, d.sms_consent)):
            if wanted is None:
                continue
            suppression = self._suppression(contact, channel)
            if wanted and not may_lift(suppression, SOURCE):
                assert suppression is not None  # may_lift allows every grant when nothing is suppressed
                log.info("consent grant refused contact=%s channel=%s source=%s: %s", d.contact_id, channel, SOURCE,
                         refusal(suppression))
                refused[channel] = refusal(suppression)
                continue
            if self.latest.get((d.contact_id, channel)) == wanted:
                continue
            self.latest[(d.contact_id, channel)] = wanted
            self.pending.consents.append((d.contact_id, channel, wanted, timezone.now()))
            if not wanted:
                self.pending.revoked[channel].add(d.contact_id)
        consent = {
            name: bool(self.latest.get((d.contact_id, name))) and self._suppression(contact, name) is None
            for name in Channel.values
        }
        return consent, refused

    def _suppression(self, contact: Contact, channel: str) -> Suppression | None:
        address = contact.address_for(channel)
        return self.suppressions.get((channel, hash_of(channel, address))) if address else None

    def _event(self, at: str, d: Wanted, updated: list[str]) -> tuple[str, services.Rescheduled | None]:
        event = self.events.get(d.event_id)
        if event is None:
            event = Event(
                external_id=d.event_id, title=d.event_title, starts_at=d.scheduled_at, timezone=d.timezone or "UTC",
                join_url=d.join_url or "",
            )
            self.events[d.event_id] = event
            self.pending.events.append(event)
            return "created", None
        changed = []
        if event.title != d.event_title:
            event.title = d.event_title
            changed.append("title")
        if d.join_url is not None and event.join_url != d.join_url:
            event.join_url = d.join_url
            changed.append("join_url")
        if changed:
            # Every registrant of the event sees these: said in the answer and the log.
            updated.extend(EVENT_FIELDS[name] for name in changed)
            log.info("event %s updated by an enrollment: %s", event.pk or "(new in this list)", ", ".join(changed))
            if event.pk is not None:
                self.pending.event_changes[d.event_id].update(changed)
        if event.starts_at == d.scheduled_at:
            return ("updated" if changed else "matched"), None
        if event.status != Event.Status.SCHEDULED:
            raise FieldError(
                f"event {shown(d.event_id)} is {event.status}: its start can no longer change", f"{at}scheduledAt"
            )
        # Re-planning reads the registrations and steps written so far: write them first.
        self._flush()
        return "rescheduled", services.reschedule(event, d.scheduled_at)

    def _registration(self, at: str, d: Wanted) -> tuple[_Registration, str, int]:
        existing = self.by_id.get(d.registration_id)
        if existing is not None:
            if existing.contact != d.contact_id:
                raise FieldError(
                    f"registration {shown(d.registration_id)} belongs to another contact ({shown(existing.contact)})",
                    f"{at}registrationId",
                )
            if existing.event != d.event_id:
                raise FieldError(
                    f"registration {shown(d.registration_id)} belongs to another event ({shown(existing.event)})",
                    f"{at}registrationId",
                )
        else:
            other = self.by_pair.get((d.contact_id, d.event_id))
            if other is not None:
                raise FieldError(
                    f"contact {shown(d.contact_id)} is already registered for event {shown(d.event_id)}"
                    f" as registration {shown(other.external_id)}",
                    f"{at}registrationId",
                )
        if existing is None:
            registration = _Registration(
                d.registration_id, d.contact_id, d.event_id, Registration.Status.ACTIVE, join_url=d.registrant_join_url or ""
            )
            self.by_id[d.registration_id] = self.by_pair[(d.contact_id, d.event_id)] = registration
            return registration, "created", 0
        if d.registrant_join_url is not None and d.registrant_join_url != existing.join_url:
            existing.join_url = d.registrant_join_url
            if existing.pk is not None:
                self.pending.join_urls[existing.pk] = d.registrant_join_url
        if existing.status == Registration.Status.ACTIVE:
            return existing, "matched", 0
        # Re-enrollment is rare: the service does it, on what has been written so far.
        self._flush()
        enrolled = services.enroll(self.contacts[d.contact_id], self.events[d.event_id], d.registration_id)
        existing.status = enrolled.registration.status
        return existing, enrolled.state, enrolled.steps_planned

    # --- writing: a statement per table ------------------------------------------------

    def _flush(self) -> None:
        pending, self.pending = self.pending, _Pending()
        if not pending:
            return
        now = timezone.now()
        self._insert_contacts(pending.contacts, now)
        for fields, contacts in _grouped(pending.contact_changes, self.contacts).items():
            for contact in contacts:
                contact.updated_at = now
            Contact.objects.bulk_update(contacts, [*sorted(fields), "updated_at"])
        # As the per-item path: a queryset update, which leaves updated_at alone.
        Event.objects.bulk_create(pending.events)
        for fields, events in _grouped(pending.event_changes, self.events).items():
            Event.objects.bulk_update(events, sorted(fields))
        insert_rows(ConsentRecord, [
            {"contact_id": self.contacts[c].pk, "channel": channel, "granted": granted, "source": SOURCE,
             "detail": DETAIL, "created_at": at}
            for c, channel, granted, at in pending.consents
        ], now)
        for channel, revoked in pending.revoked.items():
            # At once, not at each message's send-time check: a send batch may hold them.
            ids = [self.contacts[c].pk for c in revoked]
            Message.objects.filter(contact_id__in=ids, channel=channel).withdraw_for_revocation(no_consent_reason(channel), now)
        for pk, join_url in pending.join_urls.items():  # rare: one registrant's link changed
            Registration.objects.filter(pk=pk).update(join_url=join_url)
        self._plan(pending.registrations, now)

    def _insert_contacts(self, contacts: list[Contact], now: datetime) -> None:
        names = ["external_id", *CONTACT_FIELDS]
        rows = [{name: getattr(contact, name) for name in names} for contact in contacts]
        for contact, pk in zip(contacts, insert_rows(Contact, rows, now), strict=True):
            contact.pk = pk
            contact._state.adding, contact._state.db = False, connection.alias

    def _plan(self, created: list[tuple[_Registration, Enrolled]], now: datetime) -> None:
        pks = insert_rows(Registration, [
            {"external_id": r.external_id, "contact_id": self.contacts[r.contact].pk, "event_id": self.events[r.event].pk,
             "join_url": r.join_url}
            for r, _ in created
        ], now)
        for pk, (registration, _) in zip(pks, created, strict=True):
            registration.pk = pk
        if connection.features.can_return_rows_from_bulk_insert:
            planned = _insert_steps([(pk, self.events[r.event]) for pk, (r, _) in zip(pks, created, strict=True)], now)
        else:  # an old SQLite: the steps as objects, through the scheduler
            rows = [
                Registration(pk=r.pk, external_id=r.external_id, contact=self.contacts[r.contact], event=self.events[r.event])
                for r, _ in created
            ]
            steps = [s for row in rows for s in enrollment_steps(row, now)]
            planned = {s.registration_id: 0 for s in steps}
            for step in schedule_steps(steps) if steps else []:
                planned[step.registration_id] += step.status in Step.OPEN
        for registration, outcome in created:
            assert registration.pk is not None
            outcome.steps_planned = planned.get(registration.pk, 0)
        if pks:
            log.info("bulk enrollment: %d registrations created, %d steps open", len(pks), sum(planned.values()))


def _insert_steps(registrations: list[tuple[int, Event]], now: datetime) -> dict[int, int]:
    """Every new registration of an event gets the same steps but for its id: the steps of
    one registration per event are built by drip.engine.planning (the rules in one place), then one
    INSERT ... SELECT per step writes it for all of them (as drip.engine.completion does for the
    post-event funnel), and the steps already due (the welcome) are claimed in batches.
    Returns the open steps planned per registration."""
    by_event: dict[int, list[int]] = defaultdict(list)
    events: dict[int, Event] = {}
    for pk, event in registrations:
        by_event[event.pk].append(pk)
        events[event.pk] = event
    planned: dict[int, int] = defaultdict(int)
    soon: list[int] = []
    for event_pk, ids in by_event.items():
        # One registration's plan is every new one's (they are all active, attendance unknown).
        first = Registration(pk=ids[0], event=events[event_pk])
        for template in enrollment_steps(first, now):
            inserted = _insert_for(template, ids, now)
            if template.status in Step.OPEN:
                for registration_id in ids:
                    planned[registration_id] += 1
            if template.status == Step.Status.PENDING and template.due_at <= step_horizon(now):
                soon += inserted
    claim_soon(soon, now)
    return planned


def _insert_for(template: Step, registration_ids: list[int], now: datetime) -> list[int]:
    """The template step, for each of these registrations, in batches; their ids."""
    insert, params = step_insert_select(template, now)
    if connection.vendor == "postgresql":  # the ids as one array parameter, not one each
        with connection.cursor() as cursor:
            cursor.execute(insert + "WHERE r.id = ANY(%s) ORDER BY r.id RETURNING id", [*params, registration_ids])
            return [row[0] for row in cursor.fetchall()]
    sql = (
        insert +
        "WHERE r.id IN ({ids}) ORDER BY r.id RETURNING id"
    )
    inserted: list[int] = []
    with connection.cursor() as cursor:
        for batch in batches(registration_ids, BATCH):
            cursor.execute(sql.format(ids=", ".join(["%s"] * len(batch))), [*params, *batch])
            inserted += [row[0] for row in cursor.fetchall()]
    return inserted


def _grouped(changes: dict[str, set[str]], rows: dict[str, Contact] | dict[str, Event]) -> dict[frozenset[str], list]:
    """Rows by the set of fields that changed: one UPDATE per set, and a field nobody changed
    is never written back (a concurrent change to it stays)."""
    groups: dict[frozenset[str], list] = defaultdict(list)
    for external_id, fields in changes.items():
        groups[frozenset(fields)].append(rows[external_id])
    return groups
