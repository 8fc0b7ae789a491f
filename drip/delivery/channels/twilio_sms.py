"""SMS through the twilio client (one request per message, side by side from a prefork
process), its lookup through Twilio's Messages list, and the console stand-in."""
from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from twilio.rest import Client

from drip.delivery.channels.base import (
    Lookup,
    Transport,
    forget_client,
    lookup_failed,
    provider_client,
    read_environment_once,
)
from drip.delivery.channels.errors import classify
from drip.delivery.rendering import Rendered
from drip.delivery.twilio_http import LeanTwilioHttpClient
from drip.models import Message


class ConsoleSmsTransport(Transport):
    def send(self, message: Message, rendered: Rendered) -> str:
        sys.stdout.write(f"SMS to {message.to}: {rendered.text}\n")
        sys.stdout.flush()
        return f"console-{uuid.uuid4().hex}"


def _twilio_client() -> Client:
    client = Client(
        settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN,
        http_client=LeanTwilioHttpClient(timeout=settings.DRIP_PROVIDER_TIMEOUT, pool_connections=True),
    )
    # A loopback stub in tests, a regional endpoint or proxy in production.
    client.api.base_url = settings.TWILIO_API_BASE_URL
    read_environment_once(client.http_client.session, settings.TWILIO_API_BASE_URL)
    return client


class TwilioSmsTransport(Transport):
    """One request per message (Twilio has no batch), side by side (DRIP_SMS_PARALLEL) from a
    prefork process; see Transport.parallel."""

    def __init__(self) -> None:
        key = (settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, settings.TWILIO_API_BASE_URL, settings.DRIP_PROVIDER_TIMEOUT)
        self.client = provider_client("twilio", key, _twilio_client)

    @property
    def parallel(self) -> int:  # type: ignore[override]
        return settings.DRIP_SMS_PARALLEL

    def send(self, message: Message, rendered: Rendered) -> str:
        sender = (
            {"messaging_service_sid": settings.TWILIO_MESSAGING_SERVICE_SID}
            if settings.TWILIO_MESSAGING_SERVICE_SID
            else {"from_": settings.TWILIO_FROM_NUMBER}
        )
        try:
            sent = self.client.messages.create(
                to=message.to, body=rendered.text,
                # The Message id rides in the callback, so a report that beats the sender's
                # own record of the sid still finds its Message.
                status_callback=f"{settings.PUBLIC_BASE_URL}/webhooks/twilio/status/?m={message.pk}",
                # A reminder Twilio could not hand on in time is dropped, never sent hours late.
                validity_period=settings.DRIP_SMS_VALIDITY_SECONDS, **sender,
            )
        except Exception as exc:  # classified below, never swallowed
            forget_client("twilio")
            raise classify(exc) from exc
        return str(sent.sid)

    def lookup(self, message: Message) -> Lookup:
        """Twilio has no metadata to search by: the Messages list, filtered by recipient (and
        our From number), matched on the body Drip recorded before the call and on a creation
        time after the call began. No DateSent filter: a message Twilio accepted but has not
        yet sent (still queued) has no DateSent, and it is exactly the one in question."""
        service = settings.TWILIO_MESSAGING_SERVICE_SID
        sender = {} if service else {"from_": settings.TWILIO_FROM_NUMBER}
        try:
            found = self.client.messages.list(to=message.to, limit=TWILIO_LOOKUP_LIMIT, **sender)
        except Exception as exc:  # network, 5xx, bad credentials: said, never raised
            forget_client("twilio")
            return lookup_failed(exc, "twilio")
        return match_twilio_messages(found, message, service)


# Messages to one number from our sender since the call: a handful at most.
TWILIO_LOOKUP_LIMIT = 50
# Twilio's clock against ours: a message created this long before our call still counts.
CLOCK_SKEW = timedelta(minutes=2)


def match_twilio_messages(found: Iterable[Any], message: Message, service: str = "") -> Lookup:
    """Twilio's messages to this recipient → this message's Lookup. With a messaging service
    the From number is Twilio's pick, so the service sid decides which are ours; and the
    service may rewrite the body (smart encoding, link shortening), so one of ours in the
    window whose body differs means "cannot tell", not "not found": only a body match proves
    arrival, and only no candidate at all proves absence."""
    assert message.sending_at is not None
    since = message.sending_at - CLOCK_SKEW
    ours = [
        m for m in found
        if m.date_created is not None and m.date_created >= since
        and (not service or m.messaging_service_sid == service)
    ]
    for candidate in ours:
        if (candidate.body or "") == message.body and candidate.sid:
            return Lookup.accepted(str(candidate.sid))
    if service and ours:
        return Lookup.cannot_tell(
            f"a messaging service may rewrite bodies; {len(ours)} unmatched message(s) to {message.to} since the call"
        )
    return Lookup.not_found()
