"""Enrollments per second accepted by `POST /api/events`, measured from the request: the real
view through Django's test client, on PostgreSQL, with a real Redis broker receiving the
welcome tasks (nothing consumes them).

    .venv/bin/python -m bench.enroll [--sizes 200 1000] [--rounds 5]

PostgreSQL at DATABASE_URL when set (a throwaway database: rows are added to it), else a
database `drip_bench_enroll` on the local server, created and dropped here
(BENCH_PG_ADMIN_URL, default postgres://postgres@127.0.0.1:5432/postgres). Always its own
throwaway redis-server on a free port, stopped at the end. Prints one line per list size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DB_NAME = "drip_bench_enroll"
TOKEN = "bench-token"


def _pg_admin(action: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        if action == "create":
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen, str]:
    import redis

    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("bench.enroll needs redis-server on the PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(50):
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            return proc, url
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("bench.enroll: redis-server did not answer")


def enrollments(event_id: str, starts_at: datetime, size: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {"name": "event.enrolled", "data": {
            "contactId": f"{prefix}-c{i}", "eventId": event_id, "registrationId": f"{prefix}-r{i}",
            "eventTitle": "Bench webinar", "scheduledAt": starts_at.isoformat(), "contactEmail": f"{prefix}-{i}@example.com",
            "contactPhone": f"+1415555{i % 10000:04d}", "firstName": "Bench", "lastName": f"Person {i}",
            "timezone": "America/New_York", "joinUrl": "https://example.com/join", "emailConsent": True, "smsConsent": True,
        }}
        for i in range(size)
    ]


def measure(sizes: list[int], rounds: int) -> dict[str, Any]:
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    client = Client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    starts_at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    figures: dict[str, Any] = {}
    for size in sizes:
        new: list[float] = []
        repeat: list[float] = []
        for n in range(rounds + 1):  # the first round warms up and is not counted
            prefix = f"s{size}n{n}t{time.time_ns()}"
            body = json.dumps(enrollments(f"{prefix}-event", starts_at, size, prefix))
            for timings in (new, repeat):  # a new list, then the same list again (all matched)
                began = time.perf_counter()
                response = client.post("/api/events", data=body, content_type="application/json", headers=headers)
                elapsed = time.perf_counter() - began
                assert response.status_code == 202, response.content[:500]
                if n:
                    timings.append(elapsed)
        figures[str(size)] = {
            "new_per_second": round(size / statistics.median(new)),
            "repeat_per_second": round(size / statistics.median(repeat)),
            "median_seconds": round(statistics.median(new), 4),
        }
        print(
            f"lists of {size:>5}: {figures[str(size)]['new_per_second']:>6} enrollments/s new "
            f"({statistics.median(new) * 1000:.0f} ms per list), {figures[str(size)]['repeat_per_second']:>6}/s repeated",
            flush=True,
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    owned = not os.environ.get("DATABASE_URL")
    if owned:
        _pg_admin("create")
        os.environ["DATABASE_URL"] = f"{ADMIN_URL.rsplit('/', 1)[0]}/{DB_NAME}"
    redis_proc, redis_url = _start_redis()
    os.environ.update({
        "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "DJANGO_SETTINGS_MODULE": "drip.settings",
        "DEBUG": "0", "SECRET_KEY": "bench-only", "ALLOWED_HOSTS": "testserver", "DRIP_API_TOKEN": TOKEN,
        "SECURE_SSL_REDIRECT": "0",  # the test client speaks plain http
        "DRIP_LOG_LEVEL": os.environ.get("DRIP_LOG_LEVEL", "INFO"),  # production's default
    })
    try:
        print(f"bench.enroll: database {os.environ['DATABASE_URL']}  redis {redis_url}", file=sys.stderr)
        measure(args.sizes, args.rounds)
    finally:
        from django.db import connections

        connections.close_all()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        if owned:
            _pg_admin("drop")


if __name__ == "__main__":
    main()
