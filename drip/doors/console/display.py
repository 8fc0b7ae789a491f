"""How the console shows a time (always with its zone) and a step's outcome per channel."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.utils.html import format_html
from django.utils.safestring import SafeString

from drip.models import Message, Step


def zone_or_utc(name: str | None) -> str:
    try:
        ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name or "UTC"


def utc_text(value: datetime | None) -> str:
    return f"{value.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M:%S} UTC" if value else "-"


def local_text(value: datetime, zone: str) -> str:
    local = value.astimezone(ZoneInfo(zone_or_utc(zone)))
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def when(value: datetime | None, zone: str | None) -> SafeString | str:
    """The local time in the zone (the contact's or the event's), with UTC beside it."""
    if value is None:
        return "-"
    zone = zone_or_utc(zone)
    if zone == "UTC":
        return format_html('<span class="drip-when">{}</span>', utc_text(value))
    return format_html(
        '<span class="drip-when" title="{}">{}</span> <span class="drip-utc">({})</span>',
        zone, local_text(value, zone), utc_text(value),
    )


def when_short(value: datetime | None, zone: str | None) -> SafeString | str:
    """For list columns: minutes, in the zone with its abbreviation; UTC on hover."""
    if value is None:
        return "-"
    local = value.astimezone(ZoneInfo(zone_or_utc(zone)))
    return format_html('<span class="drip-when" title="{}">{}</span>', utc_text(value), f"{local:%Y-%m-%d %H:%M} {local.tzname()}")


def short(text: str, limit: int = 60) -> SafeString | str:
    """A column that stays narrow: the whole text on hover."""
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: limit - 1])


def channel_outcome(message: Message) -> str:
    word = message.get_status_display().lower()
    detail = message.error if message.status in (Message.Status.SKIPPED, Message.Status.FAILED, Message.Status.BOUNCED) else ""
    return f"{message.channel} {word}: {detail}" if detail else f"{message.channel} {word}"


def step_outcome(step: Step, messages: Iterable[Message] | None = None) -> str:
    """E.g. "email sent, sms skipped: no sms consent"; a step that never made messages says
    its own status and reason."""
    found = sorted(step.messages.all() if messages is None else messages, key=lambda m: m.channel)
    if found:
        return ", ".join(channel_outcome(m) for m in found)
    word = step.get_status_display().lower()
    return f"{word}: {step.reason}" if step.reason else word
