"""Pacing for marketing messages: quiet hours for SMS (in the contact's zone) and a cap on
how many marketing messages one contact gets per channel in a rolling window. Transactional
messages (about an event the contact registered for) are never held by either.

Both settings are parsed here at start-up, so a bad value stops the process with one sentence
naming the variable, as every other setting does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.core.exceptions import ImproperlyConfigured

WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
CAP = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([hd])\s*$")


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # the window spans midnight

    def ends_after(self, now: datetime, zone: str) -> datetime | None:
        """When the window that holds `now` ends (aware, in `zone`), or None if `now` is
        outside it. Built from the local date, so the end is right across DST changes."""
        local = now.astimezone(ZoneInfo(zone))
        if not self.contains(local.time()):
            return None
        day = local.date() if local.time() < self.end else local.date() + timedelta(days=1)
        # fold=0 and a normalising round trip: an end inside a DST gap moves to its first valid instant.
        end = datetime.combine(day, self.end, tzinfo=ZoneInfo(zone))
        return end.astimezone(ZoneInfo("UTC")).astimezone(ZoneInfo(zone))


@dataclass(frozen=True)
class FrequencyCap:
    limit: int
    window: timedelta

    def describe(self) -> str:
        hours = self.window.total_seconds() / 3600
        return f"{self.limit} per {hours / 24:g} d" if hours >= 24 and hours % 24 == 0 else f"{self.limit} per {hours:g} h"


def parse_quiet_hours(value: str, name: str = "DRIP_SMS_QUIET_HOURS") -> QuietHours | None:
    if value.strip().lower() == "off":
        return None
    match = WINDOW.match(value)
    if not match:
        raise ImproperlyConfigured(f"{name} must be HH:MM-HH:MM (e.g. 21:00-08:00) or off, not {value!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ImproperlyConfigured(f"{name} must be two different times of day HH:MM-HH:MM, not {value!r}")
    return QuietHours(time(h1, m1), time(h2, m2))


def parse_frequency_cap(value: str, name: str = "DRIP_FREQUENCY_CAP") -> FrequencyCap | None:
    if value.strip().lower() == "off":
        return None
    match = CAP.match(value)
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ImproperlyConfigured(f"{name} must be N/<hours>h or N/<days>d (e.g. 3/24h, 5/7d) or off, not {value!r}")
    count, amount, unit = int(match.group(1)), int(match.group(2)), match.group(3)
    return FrequencyCap(count, timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
