"""Signed unsubscribe tokens: the link alone says who and which channel, so a one-click
POST needs no cookie, login or CSRF token, and no one can forge another contact's link."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, reverse

from drip.domain.consent import hash_of
from drip.models import Channel

# One salt per purpose: a token signed for anything else (another feature, another
# project sharing SECRET_KEY) is refused here.
UNSUBSCRIBE_SALT = "drip.inbound.unsubscribe"
CHANNEL_CODES = {Channel.EMAIL: "e", Channel.SMS: "s"}
CODE_CHANNELS = {code: channel for channel, code in CHANNEL_CODES.items()}


class BadToken(ValueError):
    """Tampered, truncated, signed for another purpose, or naming no known channel."""


def _signer() -> signing.Signer:
    return signing.Signer(salt=UNSUBSCRIBE_SALT)


# Characters of the address's keyed hash a token carries: enough to tell the contact's
# addresses apart, and never the address itself (links get forwarded and logged).
ADDRESS_CHARS = 16


def address_tag(channel: str, address: str) -> str:
    return hash_of(channel, address)[:ADDRESS_CHARS] if address else ""


def make_token(contact_id: int, channel: str, address: str) -> str:
    """Names the contact, the channel and (as a hash) the address the message went to, so
    a link kept from an old address never unsubscribes the contact's new one. No timestamp:
    RFC 8058 links must keep working for as long as the mail is kept (SECRET_KEY_FALLBACKS
    keeps them valid across a key rotation)."""
    return _signer().sign(f"{contact_id}.{CHANNEL_CODES[Channel(channel)]}.{address_tag(channel, address)}")


@dataclass(frozen=True)
class Unsubscribe:
    contact_id: int
    channel: str
    address_tag: str  # "" in a link made before tokens named the address


def read_token(token: str) -> Unsubscribe:
    try:
        value = _signer().unsign(token)
    except signing.BadSignature as exc:
        raise BadToken(str(exc)) from None
    contact_id, code, tag = (value.split(".") + [""])[:3]
    if not contact_id.isdigit() or code not in CODE_CHANNELS or value.count(".") > 2:
        raise BadToken("malformed token value")
    return Unsubscribe(int(contact_id), CODE_CHANNELS[code], tag)


def unsubscribe_url(contact_id: int, address: str, channel: str = Channel.EMAIL) -> str:
    """Absolute, with its final slash, so APPEND_SLASH never redirects (and so drops) a POST."""
    return _unsubscribe_url(contact_id, channel, address, settings.SECRET_KEY, settings.PUBLIC_BASE_URL, get_script_prefix())


# Every email carries its link twice (footer and List-Unsubscribe header), and the step task
# renders it ahead too: signing and reversing it each time was a tenth of a render. The key
# holds everything the link is made from, so a changed secret or base URL makes a new one.
@lru_cache(maxsize=4096)
def _unsubscribe_url(contact_id: int, channel: str, address: str, secret: str, base: str, prefix: str) -> str:
    return base + reverse("unsubscribe", args=[make_token(contact_id, channel, address)])
