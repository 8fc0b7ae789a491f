"""Building (and wiping) the benchmark's world fast: bulk_create everywhere.

bulk_create sends no post_save signal, so no registration made here plans a pre-event
funnel: each figure plans or inserts exactly the steps it measures.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from drip.models import Channel, ConsentRecord, Contact, Event, Message, Registration, Step

BATCH = 5000


def wipe() -> None:
    """Empty every table the benchmark writes (CASCADE covers tables that point at them)."""
    tables = [m._meta.db_table for m in (Message, Step, Registration, ConsentRecord, Contact, Event)]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def rows_in_use() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in (Contact, Registration, Step, Message, Event)}


def analyze() -> None:
    """Fresh statistics after a bulk load, as autovacuum would give a long-lived table."""
    tables = [m._meta.db_table for m in (Message, Step, Registration, ConsentRecord, Contact, Event)]
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {', '.join(tables)}")


def reset_completion(event: Event) -> None:
    """Put an event back as it was before complete_event: scheduled, attendance unknown, no
    steps (and the dead rows vacuumed, so the next insert starts from a clean table)."""
    Step.objects.filter(registration__event=event).delete()
    Registration.objects.filter(event=event).update(attended=None)
    Event.objects.filter(pk=event.pk).update(status=Event.Status.SCHEDULED, completed_at=None)
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Step._meta.db_table}, {Registration._meta.db_table}")


def make_event(tag: str, *, completed_at: datetime | None = None, starts_in: timedelta = timedelta(days=2)) -> Event:
    now = timezone.now()
    starts_at = (completed_at - timedelta(hours=1)) if completed_at else now + starts_in
    [event] = Event.objects.bulk_create([Event(
        external_id=f"bench-{tag}", title=f"Bench webinar {tag}", starts_at=starts_at, timezone="America/New_York",
        join_url=f"https://example.com/join/{tag}",
        status=Event.Status.COMPLETED if completed_at else Event.Status.SCHEDULED, completed_at=completed_at,
    )])
    return event


def make_contacts(tag: str, n: int, *, consent: bool = True) -> list[int]:
    """n contacts with an email address and a valid US mobile number; with email and SMS
    consent granted (one ConsentRecord each) when `consent`."""
    ids: list[int] = []
    for start in range(0, n, BATCH):
        chunk = [
            Contact(
                external_id=f"{tag}-c{i}", email=f"{tag}-{i}@example.com", phone=f"+1415{i // 10000 % 1000:03d}{i % 10000:04d}",
                first_name=f"Person{i}", last_name="Bench", timezone="America/New_York",
            )
            for i in range(start, min(n, start + BATCH))
        ]
        ids += [c.pk for c in Contact.objects.bulk_create(chunk)]
    if consent:
        grants = (
            ConsentRecord(contact_id=cid, channel=channel, granted=True, source=ConsentRecord.Source.API, detail="bench")
            for cid in ids for channel in (Channel.EMAIL, Channel.SMS)
        )
        _bulk(ConsentRecord, grants)
    return ids


def make_registrations(tag: str, event: Event, contact_ids: Sequence[int], attended: bool | None = None) -> list[int]:
    registrations = (
        Registration(external_id=f"{tag}-r{i}", contact_id=cid, event=event, attended=attended)
        for i, cid in enumerate(contact_ids)
    )
    return [r.pk for r in _bulk(Registration, registrations)]


def insert_steps(event: Event, registration_ids: Iterable[int], key: str, due_at: datetime | Sequence[datetime],
                 status: str = Step.Status.PENDING) -> list[Step]:
    """Post-event steps of `key` for these registrations, inserted directly (no claim, no
    enqueue): the durable timer finds them the way it finds any step that came due."""
    registration_ids = list(registration_ids)
    assert event.completed_at is not None, "post-event steps count from the completion"
    dues = [due_at] * len(registration_ids) if isinstance(due_at, datetime) else list(due_at)
    steps = (
        Step(registration_id=rid, funnel="post_event", key=key, anchor_at=event.completed_at, due_at=due,
             status=status, enqueued_at=timezone.now() if status == Step.Status.ENQUEUED else None)
        for rid, due in zip(registration_ids, dues, strict=True)
    )
    return _bulk(Step, steps)


def _bulk(model, objects: Iterable) -> list:
    created, chunk = [], []
    for obj in objects:
        chunk.append(obj)
        if len(chunk) >= BATCH:
            created += model.objects.bulk_create(chunk)
            chunk = []
    if chunk:
        created += model.objects.bulk_create(chunk)
    return created
