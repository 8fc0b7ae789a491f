"""Addresses as suppressions know them: one normal form per address, and its keyed hash.

A suppression belongs to the address, so "UMA@Example.com" and "uma@example.com" must be one
key, and an erased person's address must stay refused without being stored. Pure functions:
the key is passed in (drip.domain.consent reads it from the database), so migrations can use them.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from functools import lru_cache

from django.core.exceptions import ValidationError

from drip.domain.validation import normalize_phone

EMAIL, SMS = "email", "sms"  # drip.models.Channel's values (models imports this module's users)
# Already E.164, as every stored number is: no need for phonenumbers' parse (0.15 ms a number).
E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def normalize_email(address: str) -> str:
    """Case-folded, its domain in IDNA (ASCII) form: every spelling of one mailbox alike.
    (Local parts are case-sensitive by the RFC, but no mail provider treats them so, and a
    suppression that misses a spelling mails someone who said no.)"""
    local, at, domain = address.strip().rpartition("@")
    if not at:
        return address.strip().casefold()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass  # not a name IDNA can encode: the case-folded text is still one key
    return f"{local.casefold()}@{domain.casefold()}"


def normalize(channel: str, address: str) -> str:
    if channel == EMAIL:
        return normalize_email(address)
    if E164.fullmatch(address):
        return address
    try:
        return normalize_phone(address)
    except ValidationError:
        return address.strip()


@lru_cache(maxsize=65536)  # a send batch or an enrollment list asks for the same addresses again
def address_hash(key: str, channel: str, address: str) -> str:
    """HMAC-SHA256 of the channel and normal form: the same for every spelling, unreadable
    without the installation's key."""
    message = f"{channel}:{normalize(channel, address)}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
