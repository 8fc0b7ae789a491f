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
            arrays.append((f"%s::{_array_type(field)}[]", [row[field.attname] for row in rows]))
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


def update_rows(model: type[models.Model], rows: Sequence[Row], condition: str, condition_params: Sequence[Any]) -> set[int]:
    """Give each row (its `id`, and values by attname) its own values, only where `condition`
    (SQL on the table's own columns, `%s` for `condition_params`) still holds; returns the
    ids it updated. On PostgreSQL one `UPDATE ... FROM unnest(...)`, a parameter per column;
    for a single row, or elsewhere, one plain UPDATE per row."""
    if not rows:
        return set()
    names = [name for name in rows[0] if name != "id"]
    fields = [f for f in map(model._meta.get_field, names) if isinstance(f, models.Field) and f.concrete]
    assert len(fields) == len(names)  # columns, never relations
    assert all(row.keys() == rows[0].keys() for row in rows)  # one statement sets the same columns in every row
    if connection.vendor != "postgresql" or len(rows) == 1:
        return _update_each(model, rows, fields, condition, condition_params)
    quote = connection.ops.quote_name
    pk = model._meta.pk
    assert pk is not None
    arrays = [f"%s::{pk.db_type(connection)}[]"] + [f"%s::{_array_type(f)}[]" for f in fields]
    aliases = ", ".join(f"c{i}" for i in range(len(arrays)))
    assignments = ", ".join(f"{quote(str(f.column))} = u.c{i}" for i, f in enumerate(fields, start=1))
    table = quote(model._meta.db_table)
    sql = (
        f"UPDATE {table} SET {assignments} FROM unnest({', '.join(arrays)}) AS u({aliases}) "
        f"WHERE {table}.{quote(str(pk.column))} = u.c0 AND {condition} RETURNING {table}.{quote(str(pk.column))}"
    )
    columns = [[row["id"] for row in rows], *([row[f.attname] for row in rows] for f in fields)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*columns, *condition_params])
        return {row[0] for row in cursor.fetchall()}


def _update_each(model: type[models.Model], rows: Sequence[Row], fields: list[models.Field], condition: str,
                 condition_params: Sequence[Any]) -> set[int]:
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(str(f.column))} = %s" for f in fields)
    pk = model._meta.pk
    assert pk is not None
    sql = f"UPDATE {quote(model._meta.db_table)} SET {assignments} WHERE {quote(str(pk.column))} = %s AND {condition}"
    updated = set()
    with connection.cursor() as cursor:
        for row in rows:
            values = [f.get_db_prep_save(row[f.attname], connection) for f in fields]
            cursor.execute(sql, [*values, row["id"], *condition_params])
            if cursor.rowcount == 1:
                updated.add(row["id"])
    return updated


def _array_type(field: models.Field) -> str:
    """The array's element type: `text` for a varchar column, since a cast to `varchar(n)`
    cuts a longer value silently, where assigning text to the column refuses it."""
    kind = str(field.db_type(connection))
    return "text" if kind.startswith("varchar") else kind
