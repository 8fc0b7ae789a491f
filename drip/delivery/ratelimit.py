"""A send rate shared by every worker, per channel, kept in Redis.

The bucket is a token bucket of depth one in its GCRA form: Redis holds the theoretical
arrival time (TAT) of the next free slot, and one Lua script (atomic, using Redis' own
clock so every worker agrees) hands out the next slot and says how far away it is. Every
caller gets its own slot, in order of asking, so waiting messages never race each other
for the same one: a near slot is waited out in the task (a short sleep), a far one goes
back to the queue with an ETA at its slot. Nothing is dropped and nothing spins.
"""
from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings

RESERVE_SLOT = """
local interval = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((wait + interval) / 1000) + 1000)
return wait
"""


@lru_cache(maxsize=4)
def _script(url: str) -> redis.commands.core.Script:
    return redis.Redis.from_url(url, socket_timeout=5).register_script(RESERVE_SLOT)


def limit_for(channel: str) -> float:
    return float(settings.DRIP_RATE_LIMITS.get(channel, 0))


def reserve_send_slot(channel: str) -> float:
    """Reserve this channel's next send slot; returns the seconds until it. A limit of 0
    messages/second means unlimited."""
    rate = limit_for(channel)
    if rate <= 0:
        return 0.0
    key = f"{settings.DRIP_RATE_LIMIT_PREFIX}:{channel}"
    wait_us = _script(settings.DRIP_RATE_LIMIT_REDIS_URL)(keys=[key], args=[int(1_000_000 / rate)])
    return int(wait_us) / 1_000_000
