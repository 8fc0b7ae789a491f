"""A send rate shared by every worker, per channel, kept in Redis.

The bucket is a token bucket of depth one in its GCRA form: Redis holds the theoretical
arrival time (TAT) of the next free slot, and one Lua script (atomic, using Redis' own
clock so every worker agrees) either reserves the next slot, when it is no further away
than DRIP_RATE_LIMIT_MAX_SLEEP, or says how long to stay away without reserving anything.
A reserved slot is waited out in the task (a short sleep); a far one sends the message
back to the queue with a countdown. Nothing is dropped and nothing spins.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings

RESERVE_SLOT = """
local interval = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > max_wait then
  return {0, wait}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((wait + interval) / 1000) + 1000)
return {1, wait}
"""


@dataclass(frozen=True)
class Slot:
    reserved: bool
    wait: float  # seconds until the slot (reserved) or until it is worth asking again


@lru_cache(maxsize=4)
def _script(url: str) -> redis.commands.core.Script:
    return redis.Redis.from_url(url, socket_timeout=5).register_script(RESERVE_SLOT)


def limit_for(channel: str) -> float:
    return float(settings.DRIP_RATE_LIMITS.get(channel, 0))


def reserve_send_slot(channel: str) -> Slot:
    """Reserve this channel's next send slot; 0 messages/second means unlimited."""
    rate = limit_for(channel)
    if rate <= 0:
        return Slot(True, 0.0)
    interval_us = int(1_000_000 / rate)
    max_wait_us = int(settings.DRIP_RATE_LIMIT_MAX_SLEEP * 1_000_000)
    key = f"{settings.DRIP_RATE_LIMIT_PREFIX}:{channel}"
    reserved, wait_us = _script(settings.DRIP_RATE_LIMIT_REDIS_URL)(keys=[key], args=[interval_us, max_wait_us])
    return Slot(bool(reserved), int(wait_us) / 1_000_000)
