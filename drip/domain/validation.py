"""Validators shared by the models (so the console's forms), the event API and the webhooks."""
from __future__ import annotations

import re
import unicodedata
import zoneinfo
from functools import lru_cache
from urllib.parse import urlsplit

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, URLValidator
from django.utils.deconstruct import deconstructible


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


# --- input rules at every door (docs/security.md: API, CSV, console, webhooks) ---------
# One validator per rule: the pydantic types of drip.doors.intake.schema, the model fields (so the
# console's forms) and the webhooks call these, so every door refuses the same values.

# Unicode categories refused in ids and one-line text: controls (Cc: "\n" forges a log line)
# and formats (Cf: U+202E reverses what an operator reads, U+200B hides a difference), plus
# the line and paragraph separators (Zl, Zp), which some log viewers also break lines on.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# ZWNJ and ZWJ are Cf but part of correct spelling (Persian, Indic scripts) and of emoji, and
# neither breaks a line nor reorders text: allowed in names and titles, never in ids.
JOINERS = frozenset({"\u200c", "\u200d"})


def first_refused_character(value: str, allow_joiners: bool = False) -> tuple[int, str] | None:
    """(position, character) of the first control or format character in `value`, or None."""
    if value.isprintable():  # the common case, in C: no Cc, Cf, Zl, Zp (nor Zs but the space)
        return None
    for position, char in enumerate(value):
        if unicodedata.category(char) in REFUSED_CATEGORIES and not (allow_joiners and char in JOINERS):
            return position, char
    return None


@deconstructible
class NoControlCharacters:
    """No Unicode control or format character (Cc, Cf, Zl, Zp); `allow_joiners` lets ZWNJ
    and ZWJ through, for names and titles."""

    code = "control_character"

    def __init__(self, allow_joiners: bool = False) -> None:
        self.allow_joiners = allow_joiners

    def __call__(self, value: str) -> None:
        found = first_refused_character(str(value), self.allow_joiners)
        if found is not None:
            position, char = found
            raise ValidationError(
                "must not contain control or format characters (%(char)s at position %(position)s)",
                code=self.code, params={"char": f"U+{ord(char):04X}", "position": position},
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoControlCharacters) and other.allow_joiners == self.allow_joiners

    def __hash__(self) -> int:
        return hash((NoControlCharacters, self.allow_joiners))


validate_no_control_characters = NoControlCharacters()  # ids, addresses, URLs
validate_text_line = NoControlCharacters(allow_joiners=True)  # names, titles

# Django's own, minus its "localhost" allowlist: a recipient is a mailbox on a public domain.
_email_syntax = EmailValidator(allowlist=[])


def validate_email_address(value: str) -> None:
    """A plain mailbox: Django's syntax, no quoted local part ("a,b"@x hides a second
    recipient from whoever reads it), no IP-literal domain (root@[127.0.0.1] reaches inside)."""
    validate_no_control_characters(value)
    local, _, domain = str(value).rpartition("@")
    if '"' in local:
        raise ValidationError("must not have a quoted local part (\"...\"@)", code="email_quoted")
    if domain.startswith("["):
        raise ValidationError("must name a domain, not an IP address", code="email_ip_literal")
    _email_syntax(value)


_http_url_syntax = URLValidator(schemes=["http", "https"])


def validate_http_url(value: str) -> None:
    """An http(s) URL without user info: https://meet.example.com@evil.example/ goes to
    evil.example while it reads as meet.example.com."""
    validate_no_control_characters(value)
    try:
        _http_url_syntax(value)
    except ValidationError:
        raise ValidationError("must be an http(s) URL", code="url") from None
    if "@" in urlsplit(str(value)).netloc:
        raise ValidationError("must not carry user info (user@ before the host)", code="url_userinfo")


# What a Twilio webhook names as From / To: an E.164 number, a short code, or an
# alphanumeric sender id, optionally behind a channel prefix ("whatsapp:+14155550123").
_WEBHOOK_ADDRESS = re.compile(r"(?:[a-z]{2,16}:)?(?:\+[1-9][0-9]{6,14}|[0-9]{3,8}|[A-Za-z0-9 ]{1,11})")


def validate_webhook_address(value: str) -> None:
    """A provider's From / To field: phone-like, at most 32 characters, nothing else."""
    if len(value) > 32 or not _WEBHOOK_ADDRESS.fullmatch(value):
        raise ValidationError("is not a phone number, short code or sender id", code="webhook_address")
