"""PostgreSQL `timestamptz` values read by psycopg's C loader.

Django (5.2, psycopg 3) registers its own loader for `timestamptz` on every connection: a
Python subclass of psycopg's pure-Python loader that parses each value in Python and then
replaces its tzinfo with Django's. A send batch reads about twenty such columns per message
(the message, its contact, registration, event and step), and that parsing was a tenth of the
worker's CPU at a reminder instant (py-spy, bench/README.md). When the session's TimeZone is
UTC, which is what Django sets with USE_TZ and TIME_ZONE = "UTC", psycopg's C loader already
returns `datetime.timezone.utc` datetimes: the values Django's loader returns, for a fraction
of the cost. So where Django expects UTC, a loader is registered in its place that keeps the
`timezone` attribute Django's cursor reads, and hands each cursor made while the session's
zone is UTC to the C loader (any other cursor parses as Django's does).
"""
from __future__ import annotations

from datetime import UTC
from typing import Any

from django.db.backends.signals import connection_created

TIMESTAMPTZ = "timestamptz"


def _c_loader() -> type | None:
    try:
        from django.db.backends.postgresql.psycopg_any import BaseTzLoader
        from psycopg import pq
    except ImportError:
        return None
    if pq.__impl__ == "binary":
        from psycopg_binary import _psycopg
    elif pq.__impl__ == "c":
        from psycopg_c import _psycopg  # type: ignore[import-not-found,no-redef]  # the compiled build
    else:
        return None  # pure Python: no C loader to use, Django's stays

    class UtcTimestamptzLoader(BaseTzLoader):
        """Django's loader on the outside (its `timezone`, which Django's cursor compares with
        its own); psycopg's C loader doing the work (the C loader cannot be subclassed), as
        long as the session's zone is UTC when the cursor is made."""

        timezone = UTC

        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            raw = getattr(context, "connection", None)
            if raw is not None and raw.info.parameter_status("TimeZone") == "UTC":
                self.load = _psycopg.TimestamptzLoader(oid, context).load  # type: ignore[attr-defined]

    return UtcTimestamptzLoader


UTC_LOADER = _c_loader()


def use_c_timestamptz_loader(sender: Any, connection: Any, **kwargs: Any) -> None:
    if UTC_LOADER is None or connection.vendor != "postgresql":
        return
    if connection.timezone is not UTC:
        return  # USE_TZ off, or another zone for Django: its own loader converts, and stays
    # A session whose zone is not UTC when a cursor is made gets Django's parsing from it.
    connection.connection.adapters.register_loader(TIMESTAMPTZ, UTC_LOADER)


def connect() -> None:
    connection_created.connect(use_c_timestamptz_loader, dispatch_uid="drip.dbtime")
