"""Email through Django's email backend: anymail (any ESP) in production, the console in
development. With Postmark, several messages go in one `/email/batch` request (postmark.py)."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import requests
from anymail.backends.postmark import EmailBackend as PostmarkBackend
from anymail.backends.postmark import PostmarkPayload
from anymail.message import AnymailMessage
from django.conf import settings
from django.core.mail import get_connection

from drip.delivery.channels.base import (
    METADATA_KEY,
    Lookup,
    Outcome,
    Transport,
    TransportError,
    classify,
    forget_client,
    provider_client,
    read_environment_once,
)
from drip.delivery.channels.postmark import BACKEND as POSTMARK_BACKEND
from drip.delivery.channels.postmark import batches as postmark_batches
from drip.delivery.channels.postmark import like as postmark_like
from drip.delivery.channels.postmark import lookup as postmark_lookup
from drip.delivery.channels.postmark import post_batch as post_postmark_batch
from drip.delivery.rendering import Rendered
from drip.domain.tokens import unsubscribe_url
from drip.models import Message


def _open_email_connection() -> Any:
    # anymail's own REQUESTS_TIMEOUT is overridden: one timeout for every provider call.
    connection = get_connection(fail_silently=False, timeout=settings.DRIP_PROVIDER_TIMEOUT)
    connection.open()
    session = getattr(connection, "session", None)  # anymail's requests-based backends
    if isinstance(session, requests.Session):
        read_environment_once(session, getattr(connection, "api_url", ""))
    return connection


class EmailTransport(Transport):
    """Django's email backend: anymail (any ESP) in production, the console in development.
    With Postmark, several messages go in one `/email/batch` request."""

    @property
    def batch_max(self) -> int:
        return settings.DRIP_EMAIL_BATCH_MAX if postmark_batches(self._connection()) else super().batch_max

    @property
    def parallel(self) -> int:  # type: ignore[override]
        """An ESP's API that takes one email per request is called side by side; the console
        and SMTP backends one after the other."""
        return settings.DRIP_EMAIL_PARALLEL if settings.EMAIL_BACKEND.startswith("anymail.") else 1

    def _connection(self) -> Any:
        key = (settings.EMAIL_BACKEND, repr(sorted(settings.ANYMAIL.items())), settings.DRIP_PROVIDER_TIMEOUT)
        return provider_client("email", key, _open_email_connection)

    def _email(self, message: Message, rendered: Rendered) -> AnymailMessage:
        """The one message both paths send, so `/email/batch` carries what `/email` would."""
        email = AnymailMessage(
            subject=rendered.subject, body=rendered.text, to=[message.to],
            from_email=settings.DEFAULT_FROM_EMAIL, connection=self._connection(),
            # Comes back in every delivery report, so the report finds its Message even
            # before (or without) the provider's message id.
            metadata={METADATA_KEY: str(message.pk)},
        )
        if rendered.html:
            email.attach_alternative(rendered.html, "text/html")
        email.extra_headers.update(email_headers(message))
        return email

    def send(self, message: Message, rendered: Rendered) -> str:
        email = self._email(message, rendered)
        try:
            email.send()
        except Exception as exc:  # classified below, never swallowed
            forget_client("email")
            raise classify(exc) from exc
        status = getattr(email, "anymail_status", None)
        # A plain Django backend (console, SMTP) leaves an AnymailMessage's status empty: no
        # provider id, and nothing an ESP said.
        if status is None or status.status is None:
            return f"local-{uuid.uuid4().hex}"
        if status.status and status.status <= {"invalid", "rejected", "failed"}:
            raise TransportError(
                f"recipient {'/'.join(sorted(status.status))} by the provider", permanent=True,
                revoke_consent="rejected" in status.status,
            )
        return str(status.message_id or f"unknown-{uuid.uuid4().hex}")

    def send_many(self, items: Sequence[tuple[Message, Rendered]]) -> list[Outcome]:
        connection = self._connection()
        if len(items) < 2 or not postmark_batches(connection):
            return super().send_many(items)  # one request each
        # Each message's JSON is anymail's own `/email` payload; one that cannot be built
        # (an address anymail refuses) fails alone.
        built = self._postmark_payloads(connection, items)
        payloads = [p for p in built if isinstance(p, PostmarkPayload)]
        answers = iter(post_postmark_batch(connection, payloads))
        return [p if isinstance(p, TransportError) else next(answers) for p in built]

    def _postmark_payloads(
        self, connection: PostmarkBackend, items: Sequence[tuple[Message, Rendered]]
    ) -> list[PostmarkPayload | TransportError]:
        """anymail builds the first message's payload (and any whose address is not plain
        ASCII); the others are that payload with their own recipient, subject, bodies,
        headers and metadata put in. anymail parses and formats the same From address and
        the send defaults again for every message: about 0.3 ms an email, a third of a
        send's CPU. tests/test_email_batch.py pins the result to anymail's own, field by field."""
        model: PostmarkPayload | None = None
        built: list[PostmarkPayload | TransportError] = []
        for message, rendered in items:
            if model is not None and message.to.isascii():
                built.append(postmark_like(model, message, rendered, email_headers(message)))
                continue
            payload = self._postmark_payload(connection, message, rendered)
            if model is None and isinstance(payload, PostmarkPayload) and message.to.isascii():
                model = payload
            built.append(payload)
        return built

    def _postmark_payload(self, connection: PostmarkBackend, message: Message, rendered: Rendered) -> PostmarkPayload | TransportError:
        try:
            return connection.build_message_payload(self._email(message, rendered), connection.send_defaults)
        except Exception as exc:  # classified, as `send` would
            return classify(exc)


    def lookup(self, message: Message) -> Lookup:
        # Postmark's outbound search filters on the metadata every send carries. Other ESPs
        # (and the console / SMTP backends) have no lookup here: cannot tell.
        if settings.EMAIL_BACKEND != POSTMARK_BACKEND:
            return Lookup.cannot_tell(f"no lookup for the email backend {settings.EMAIL_BACKEND}")
        return postmark_lookup(message)


def email_headers(message: Message) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe (both headers must be covered by the DKIM signature:
    the operator's ESP set-up) and our own id."""
    return {
        "X-Drip-Message-Id": str(message.pk),
        "List-Unsubscribe": f"<{unsubscribe_url(message.contact_id, message.to)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
