"""Signed unsubscribe tokens: the link alone says who and which channel, so a one-click
POST needs no cookie, login or CSRF token, and no one can forge another contact's link."""
from __future__ import annotations

from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, reverse

from ..models import Channel

# One salt per purpose: a token signed for anything else (another feature, another
# project sharing SECRET_KEY) is refused here.
UNSUBSCRIBE_SALT = "drip.inbound.unsubscribe"
CHANNEL_CODES = {Channel.EMAIL: "e", Channel.SMS: "s"}
CODE_CHANNELS = {code: channel for channel, code in CHANNEL_CODES.items()}


class BadToken(ValueError):
    """Tampered, truncated, signed for another purpose, or naming no known channel."""


def _signer() -> signing.Signer:
    return signing.Signer(salt=UNSUBSCRIBE_SALT)


def make_token(contact_id: int, channel: str = Channel.EMAIL) -> str:
    # No timestamp: RFC 8058 links must keep working for as long as the mail is kept, and
    # the same token every time lets the header and the footer carry the same URL.
    return _signer().sign(f"{contact_id}.{CHANNEL_CODES[Channel(channel)]}")


def read_token(token: str) -> tuple[int, str]:
    """(contact id, channel), or BadToken."""
    try:
        value = _signer().unsign(token)
    except signing.BadSignature as exc:
        raise BadToken(str(exc)) from None
    contact_id, _, code = value.partition(".")
    if not contact_id.isdigit() or code not in CODE_CHANNELS:
        raise BadToken(f"malformed token value {value!r}")
    return int(contact_id), CODE_CHANNELS[code]


def unsubscribe_url(contact_id: int, channel: str = Channel.EMAIL) -> str:
    """Absolute, with its final slash, so APPEND_SLASH never redirects (and so drops) a POST."""
    return _unsubscribe_url(contact_id, channel, settings.SECRET_KEY, settings.PUBLIC_BASE_URL, get_script_prefix())


# Every email carries its link twice (footer and List-Unsubscribe header), and the step task
# renders it ahead too: signing and reversing it each time was a tenth of a render. The key
# holds everything the link is made from, so a changed secret or base URL makes a new one.
@lru_cache(maxsize=4096)
def _unsubscribe_url(contact_id: int, channel: str, secret: str, base: str, prefix: str) -> str:
    return base + reverse("unsubscribe", args=[make_token(contact_id, channel)])
