"""drip.dbtime: on PostgreSQL, timestamptz columns are read by psycopg's C loader, and every
value is the one Django's own loader gives (same instant, tzinfo datetime.timezone.utc)."""
from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.utils import timezone

from drip.models import Message
from drip.support.dbtime import UTC_LOADER
from tests.factories import make_contact

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's loaders only")

VALUES = [
    "2026-03-08 06:59:59.123456+00", "2026-03-08 02:30:00-05", "2026-11-01 01:30:00-04", "1999-12-31 23:00:00-05",
    "2038-01-19 03:14:08+00", "1970-01-01 00:00:00+00", "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00",
    "2024-02-29 12:00:00+05:45", "2026-06-30 23:59:59.000001-09:30",
]


def _read(cursor) -> list:
    cursor.execute("SELECT " + ", ".join(f"'{v}'::timestamptz" for v in VALUES) + ", now(), NULL::timestamptz")
    return list(cursor.fetchone())


def test_it_reads_what_djangos_loader_reads(db) -> None:
    with connection.cursor() as ours:
        loader = connection.connection.adapters.get_loader(1184, 0)
        assert UTC_LOADER is not None and loader is UTC_LOADER and getattr(loader, "timezone", None) is UTC
        got = _read(ours)
    with connection.cursor() as theirs:
        register_tzloader(UTC, theirs.cursor)  # Django's own loader, on this cursor only
        expected = _read(theirs)
    assert got[:-2] == expected[:-2] and got[-1] is None and expected[-1] is None
    assert all(value.tzinfo is UTC for value in got[:-1])
    assert abs(got[-2] - expected[-2]) < timedelta(seconds=5)


def test_models_read_aware_utc_times(db) -> None:
    contact = make_contact()
    at = timezone.now().replace(microsecond=654321)
    message = Message.objects.create(contact=contact, channel="email", template_type="welcome", next_attempt_at=at)
    loaded = Message.objects.get(pk=message.pk)
    assert loaded.next_attempt_at == at and loaded.next_attempt_at.tzinfo is UTC
