"""Validators shared by the models, the admin and (later) the event API."""
from __future__ import annotations

import zoneinfo
from functools import lru_cache

import phonenumbers
from django.core.exceptions import ValidationError


def normalize_phone(value: str) -> str:
    """Return the number in E.164, or raise ValidationError saying why it was refused."""
    raw = (value or "").strip()
    if not raw:
        return ""
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise ValidationError(
            "%(value)s is not a phone number in international format (E.164, e.g. +14155550123).",
            code="invalid_phone",
            params={"value": raw},
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(
            "%(value)s is not a valid phone number.", code="invalid_phone", params={"value": raw}
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def validate_phone(value: str) -> None:
    normalize_phone(value)


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_timezone(value: str) -> None:
    if value not in _known_zones():
        raise ValidationError(
            "%(value)s is not a known IANA time zone (e.g. America/New_York, Europe/Paris, UTC).",
            code="invalid_timezone",
            params={"value": value},
        )
