"""How a message reaches its provider: one transport per channel and provider (after
healthchecks' hc/api/transports.py), and one place that classifies provider errors.

- errors.py: TransportError and `classify`, the one place an error becomes retry or give up;
- base.py: Transport (send, send_many, lookup), provider clients per thread, Lookup;
- email.py: Django's email backend (anymail in production), and postmark.py its batch and search;
- twilio_sms.py: the twilio client, and the console stand-in for development.
"""
from __future__ import annotations

from django.conf import settings

from drip.delivery.channels.base import GROUP_SIZE, Lookup, Transport
from drip.delivery.channels.email import EmailTransport
from drip.delivery.channels.errors import Outcome, TransportError, classify, classify_postmark_result
from drip.delivery.channels.twilio_sms import ConsoleSmsTransport, TwilioSmsTransport
from drip.models import Channel

__all__ = [
    "GROUP_SIZE", "ConsoleSmsTransport", "EmailTransport", "Lookup", "Outcome", "Transport", "TransportError",
    "TwilioSmsTransport", "classify", "classify_postmark_result", "transport_for",
]


def transport_for(channel: str) -> Transport:
    if channel == Channel.EMAIL:
        return EmailTransport()
    if settings.SMS_BACKEND == "twilio":
        return TwilioSmsTransport()
    return ConsoleSmsTransport()
