"""Inserting many plain rows without building a model instance for each.

`bulk_create` builds an instance per row and prepares every value through its field, then
psycopg binds each value as its own parameter: at a list of 1,000 enrollments (1,000
contacts, 2,000 consent records, 1,000 registrations) that was about a third of the
request. On PostgreSQL a column goes as one array parameter instead, unnested by the
server, so the statement and its parameters have one entry per column whatever the number
of rows. Elsewhere (SQLite, which the tests also run on) it is bulk_create.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection, models

Row = dict[str, Any]  # attname -> value, the same keys in every row


def insert_rows(model: type[models.Model], rows: Sequence[Row], now: datetime) -> list[int]:
    """Insert `rows` (values by field attname; the model's defaults for the fields left out,
    `now` for auto_now fields) and return their primary keys in the order of `rows`."""
    if not rows:
        return []
    if connection.vendor != "postgresql":
        created = model._default_manager.bulk_create([model(**row) for row in rows])
        return [obj.pk for obj in created]
    return _unnest_insert(model, rows, now)


def _unnest_insert(model: type[models.Model], rows: Sequence[Row], now: datetime) -> list[int]:
    given = set(rows[0])
    quote = connection.ops.quote_name
    columns, selected, arrays, constants = [], [], [], []
    for field in model._meta.concrete_fields:
        if field.primary_key:
            continue
        columns.append(quote(str(field.column)))
        if field.attname in given:
            # Values go to psycopg as they are: what these models hold (str, bool, int, aware
            # datetime, None) needs no preparing by the field.
            arrays.append((f"%s::{field.db_type(connection)}[]", [row[field.attname] for row in rows]))
            selected.append(f"u.c{len(arrays)}")
        else:
            constants.append(field.get_db_prep_save(_default(field, now), connection))
            selected.append("%s")
    names = ", ".join(f"c{i}" for i in range(1, len(arrays) + 1))
    # ORDER BY the position: rows are inserted, and RETURNING answers, in the order given.
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(selected)} FROM unnest({', '.join(a[0] for a in arrays)}) WITH ORDINALITY AS u({names}, n) "
        f"ORDER BY u.n RETURNING {quote(str(model._meta.pk.column))}"
    )
    # The constants come first in the statement's text (SELECT list), the arrays after.
    params = [*constants, *(a[1] for a in arrays)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _default(field: models.Field, now: datetime) -> Any:
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return now
    return field.get_default()
