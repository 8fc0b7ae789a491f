"""The project's Celery app plus one no-op task, for the benchmark's reference throughput.

The worker runs as `celery -A bench.celery_bench worker ...`: the same app object, the same
configuration (acks_late, prefetch 1, queues, routes) and the same drip tasks as
`celery -A celery_app worker`, with `bench.noop` registered next to them. Project code is
untouched.
"""
from __future__ import annotations

import time

import redis

from celery_app import app

__all__ = ["app", "noop"]

NOOP_COUNT = "bench:noop:count"
NOOP_FIRST = "bench:noop:first"
NOOP_LAST = "bench:noop:last"
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    # One connection per pool process, made after the fork.
    global _client
    if _client is None:
        _client = redis.Redis.from_url(app.conf.broker_url)
    return _client


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    """Does nothing but leave a mark (one pipelined Redis round trip) so the benchmark can
    tell when the last one ran."""
    now = time.time()
    pipe = _redis().pipeline(transaction=False)
    pipe.incr(NOOP_COUNT)
    pipe.setnx(NOOP_FIRST, now)
    pipe.set(NOOP_LAST, now)
    pipe.execute()


@app.task(name="bench.sleep", ignore_result=True)
def sleep(seconds: float) -> None:
    """Used only to make sure both pool processes are up and warm before a measurement."""
    time.sleep(seconds)
