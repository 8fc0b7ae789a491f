"""The one place provider errors become "retry", "give up", or "may have arrived" (after
healthchecks' TransportError): the anymail, requests and twilio exceptions of every channel,
and one message's answer inside a Postmark batch."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import requests
from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused, AnymailRequestsAPIError
from twilio.base.exceptions import TwilioException, TwilioRestException
from urllib3.exceptions import ProtocolError

# Twilio error codes that no retry can fix.
TWILIO_INVALID_NUMBER = 21211
TWILIO_NOT_MOBILE = 21614
TWILIO_OPTED_OUT = 21610
TWILIO_PERMANENT = {TWILIO_INVALID_NUMBER, TWILIO_NOT_MOBILE, TWILIO_OPTED_OUT, 21408, 21612}
# Postmark's ErrorCode of one message in a batch answer.
POSTMARK_INACTIVE = 406  # the recipient hard-bounced or complained: Postmark's own suppression
POSTMARK_MAINTENANCE = 100  # the only one a retry can fix


class TransportError(Exception):
    def __init__(
        self, message: str, permanent: bool = False, revoke_consent: bool = False, maybe_sent: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        # The provider says the recipient opted out: record it as their suppression.
        self.revoke_consent = revoke_consent
        # The request left and no answer came back (a read timeout, a connection dropped
        # mid-call): the provider may have accepted it. Sending again could deliver it
        # twice, so the message is looked up at the provider instead (drip/delivery/verify.py).
        self.maybe_sent = maybe_sent


def classify(exc: Exception) -> TransportError:
    """The one place provider errors become "retry" or "give up"."""
    if isinstance(exc, TransportError):
        return exc
    if _left_without_answer(exc):
        return TransportError(f"no answer from the provider, the request may have arrived: {_cause(exc)}", maybe_sent=True)
    if isinstance(exc, AnymailRecipientsRefused):
        # "rejected" is the ESP's own suppression (hard bounce, complaint): record it as ours.
        sent = getattr(exc, "email_message", None)
        statuses = getattr(getattr(sent, "anymail_status", None), "status", None) or set()
        return TransportError(f"recipient refused: {exc}", permanent=True, revoke_consent="rejected" in statuses)
    if isinstance(exc, TwilioRestException):
        detail = f"twilio {exc.status} error {exc.code}: {exc.msg}"
        if exc.code in TWILIO_PERMANENT:
            return TransportError(detail, permanent=True, revoke_consent=exc.code == TWILIO_OPTED_OUT)
        return TransportError(detail, permanent=not transient_status(exc.status))
    if isinstance(exc, AnymailAPIError):
        status = exc.status_code if isinstance(exc, AnymailRequestsAPIError) else None
        if status is None:
            # No HTTP answer at all (connection refused, timeout): worth another try.
            return TransportError(f"email provider unreachable: {exc}", permanent=False)
        if 200 <= status < 300:
            # Accepted, but the answer could not be read (cut short, not JSON).
            return TransportError(f"email provider {status}, answer unreadable: {exc}", maybe_sent=True)
        return TransportError(f"email provider {status}: {exc}", permanent=not transient_status(status))
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return TransportError(f"provider unreachable: {exc}", permanent=False)
    if isinstance(exc, TwilioException):
        # Newer twilio raises exceptions that are not TwilioRestException; treat unknown
        # ones as transient so the retry limit, not a guess, ends them.
        return TransportError(f"twilio: {exc}", permanent=False)
    return TransportError(f"{type(exc).__name__}: {exc}", permanent=False)


def classify_postmark_result(result: dict[str, Any]) -> str | TransportError:
    """One message's answer inside Postmark's `/email/batch` answer (HTTP 200 for the whole
    request): its MessageID, or its error read as `classify` reads the same answer from
    `/email` (there, anymail turns it into a refused recipient or an HTTP 422 error)."""
    code = result.get("ErrorCode", 0)
    text = str(result.get("Message", ""))
    # Code 0 naming "inactive addresses" names our only recipient: accepted for nobody.
    if code == 0 and "inactive addresses" not in text:
        return str(result.get("MessageID") or f"unknown-{uuid.uuid4().hex}")
    detail = f"postmark error {code}: {text.strip()}"
    if code in (0, POSTMARK_INACTIVE):
        # The ESP's own suppression, like anymail's "rejected": record it as ours.
        return TransportError(f"recipient refused: {detail}", permanent=True, revoke_consent=True)
    return TransportError(detail, permanent=code != POSTMARK_MAINTENANCE)


def transient_status(status: int | None) -> bool:
    return status is None or status == 429 or status >= 500


Outcome = str | TransportError  # a message's provider id, or why it was not sent


def _left_without_answer(exc: BaseException) -> bool:
    """Did the request reach the provider, with no answer back? Only on evidence that a
    connection carried it: a read timeout, an answer cut short, or urllib3's ProtocolError
    (the connection was reset or closed after it was made: "Connection aborted."). A connect
    error or connect timeout means nothing left, and an error saying neither is taken as
    such too: a plain retry, as before. (anymail's errors are also the requests error they
    wrap, and keep it as their cause, so both are seen here.)"""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, (requests.ReadTimeout, requests.exceptions.ChunkedEncodingError)):
        return True
    return isinstance(exc, requests.ConnectionError) and any(isinstance(e, ProtocolError) for e in _chain(exc))


def _chain(exc: BaseException) -> Iterable[object]:
    """The exception, what it wraps (requests keeps urllib3's error in args, urllib3 its
    own cause in `reason`), and its __cause__ chain."""
    seen: list[object] = []
    todo: list[object] = [exc]
    while todo and len(seen) < 20:
        item = todo.pop()
        seen.append(item)
        if isinstance(item, BaseException):
            todo += [a for a in item.args if isinstance(a, BaseException)]
            todo += [x for x in (item.__cause__, getattr(item, "reason", None)) if isinstance(x, BaseException)]
    return seen


def _cause(exc: BaseException) -> str:
    return f"{type(exc.__cause__ or exc).__name__}: {exc.__cause__ or exc}"
