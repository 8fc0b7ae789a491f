"""Channels as transports (after healthchecks' hc/api/transports.py): one small class per
way of reaching a recipient, and one place (`classify`) that tells a provider error to
retry from one to give up on, and from one after which the message may have arrived.

Each transport can also `lookup` a message: ask its provider whether it accepted it (by the
Message id Drip attaches to every send), for a send whose outcome is unknown."""
from __future__ import annotations

import copy
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urljoin

import requests
from anymail.backends.postmark import EmailBackend as PostmarkBackend
from anymail.backends.postmark import PostmarkPayload
from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused, AnymailRequestsAPIError
from anymail.message import AnymailMessage
from anymail.utils import get_anymail_setting
from django.conf import settings
from django.core.mail import get_connection
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client
from urllib3.exceptions import ProtocolError

from .inbound.email_reports import METADATA_KEY
from .inbound.tokens import unsubscribe_url
from .models import Channel, Message
from .rendering import Rendered
from .twilio_http import LeanTwilioHttpClient

log = logging.getLogger("drip.channels")
T = TypeVar("T")

# Twilio error codes that no retry can fix.
TWILIO_INVALID_NUMBER = 21211
TWILIO_NOT_MOBILE = 21614
TWILIO_OPTED_OUT = 21610
TWILIO_PERMANENT = {TWILIO_INVALID_NUMBER, TWILIO_NOT_MOBILE, TWILIO_OPTED_OUT, 21408, 21612}
# Postmark's ErrorCode of one message in a batch answer.
POSTMARK_INACTIVE = 406  # the recipient hard-bounced or complained: Postmark's own suppression
POSTMARK_MAINTENANCE = 100  # the only one a retry can fix
POSTMARK_BACKEND = "anymail.backends.postmark.EmailBackend"
POSTMARK_API_URL = "https://api.postmarkapp.com/"


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
        # twice, so the message is looked up at the provider instead (drip/verify.py).
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
        return TransportError(detail, permanent=not _transient_status(exc.status))
    if isinstance(exc, AnymailAPIError):
        status = exc.status_code if isinstance(exc, AnymailRequestsAPIError) else None
        if status is None:
            # No HTTP answer at all (connection refused, timeout): worth another try.
            return TransportError(f"email provider unreachable: {exc}", permanent=False)
        if 200 <= status < 300:
            # Accepted, but the answer could not be read (cut short, not JSON).
            return TransportError(f"email provider {status}, answer unreadable: {exc}", maybe_sent=True)
        return TransportError(f"email provider {status}: {exc}", permanent=not _transient_status(status))
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


def _transient_status(status: int | None) -> bool:
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


@dataclass(frozen=True)
class Lookup:
    """What a provider says about one message: it accepted it (with its id), it has no such
    message, or this cannot be told (`retry`: not now, e.g. the lookup failed on the network)."""

    ACCEPTED = "accepted"
    NOT_FOUND = "not found"
    CANNOT_TELL = "cannot tell"

    outcome: str
    provider_id: str = ""
    reason: str = ""
    retry: bool = False

    @classmethod
    def accepted(cls, provider_id: str) -> Lookup:
        return cls(cls.ACCEPTED, provider_id=provider_id)

    @classmethod
    def not_found(cls) -> Lookup:
        return cls(cls.NOT_FOUND)

    @classmethod
    def cannot_tell(cls, reason: str, retry: bool = False) -> Lookup:
        return cls(cls.CANNOT_TELL, reason=reason, retry=retry)


def _lookup_failed(exc: Exception, provider: str) -> Lookup:
    """A lookup that got no usable answer: the network or the provider's 5xx / 429 is worth
    another try later; anything else (bad credentials, a 4xx) will not change by waiting."""
    # requests errors carry the response; twilio's list raises TwilioException(text, response).
    responses = [getattr(exc, "response", None), *exc.args]
    status = next((r.status_code for r in responses if isinstance(getattr(r, "status_code", None), int)), None)
    transient = isinstance(exc, (requests.ConnectionError, requests.Timeout)) or _transient_status(status)
    return Lookup.cannot_tell(f"{provider} lookup failed: {type(exc).__name__}: {exc}", retry=transient)


# One-request-per-message sends made side by side are gathered in groups of this many, which
# share one guarded write before their calls and one outcome write after them, keeping the
# writes a small share of each SMS.
GROUP_SIZE = 32


class Transport:
    # Requests made side by side (threads of the process, each with its own client) by a send
    # task on its process's main thread (the prefork `worker` and `sender_email`), so the
    # process waits for one round trip per `parallel` messages; a task on a threads pool
    # (`sender_sms`) already runs beside the others and sends one at a time.
    parallel = 1

    @property
    def batch_max(self) -> int:
        """Messages the sender gathers for one `send_many`: what one provider request carries
        (1 here), or a group of requests made side by side."""
        return max(GROUP_SIZE, self._side_by_side()) if self._side_by_side() > 1 else 1

    def _side_by_side(self) -> int:
        return self.parallel if threading.current_thread() is threading.main_thread() else 1

    def send(self, message: Message, rendered: Rendered) -> str:
        """Send and return the provider's message id, or raise TransportError."""
        raise NotImplementedError

    def send_many(self, items: Sequence[tuple[Message, Rendered]]) -> list[Outcome]:
        """Every message's outcome, in order. Here one request each (side by side where the
        transport allows it); a transport whose provider takes several messages in one
        request sends them together."""
        if len(items) > 1 and self._side_by_side() > 1:
            # Each thread sends through its own transport, and so its own client (_client
            # keeps one per thread): a requests session is not shared between threads.
            return list(_request_threads(self.parallel).map(partial(_send_alone, type(self)), items))
        outcomes: list[Outcome] = []
        for message, rendered in items:
            try:
                outcomes.append(self.send(message, rendered))
            except TransportError as exc:
                outcomes.append(exc)
        return outcomes

    def lookup(self, message: Message) -> Lookup:
        """Did the provider accept this message? Never raises: a failure is "cannot tell"."""
        return Lookup.cannot_tell(f"{type(self).__name__} has no way to ask")


# Provider clients are kept per worker thread (a new HTTP session, and TLS handshake, per
# message is a third of a send's cost) and rebuilt when their settings change.
_clients = threading.local()


def _client(name: str, key: tuple, build: Callable[[], T]) -> T:
    held = getattr(_clients, name, None)
    if held is None or held[0] != key:
        _forget(name)
        held = (key, build())
        setattr(_clients, name, held)
    return held[1]


def _forget(name: str) -> None:
    """Drop a client after an error: its connection may be the broken part."""
    held = getattr(_clients, name, None)
    setattr(_clients, name, None)
    if held is not None and hasattr(held[1], "close"):
        try:
            held[1].close()
        except Exception:  # closing a broken connection may fail too; it is dropped anyway
            log.debug("closing %s failed", name, exc_info=True)


def _read_environment_once(session: requests.Session, url: str) -> None:
    """While `trust_env` is on, requests reads the proxy variables and ~/.netrc again on
    every request (a tenth of a send's CPU). A provider client talks to one API with its own
    credentials, so it reads them once, here."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


def _open_email_connection() -> Any:
    # anymail's own REQUESTS_TIMEOUT is overridden: one timeout for every provider call.
    connection = get_connection(fail_silently=False, timeout=settings.DRIP_PROVIDER_TIMEOUT)
    connection.open()
    session = getattr(connection, "session", None)  # anymail's requests-based backends
    if isinstance(session, requests.Session):
        _read_environment_once(session, getattr(connection, "api_url", ""))
    return connection


class EmailTransport(Transport):
    """Django's email backend: anymail (any ESP) in production, the console in development.
    With Postmark, several messages go in one `/email/batch` request."""

    @property
    def batch_max(self) -> int:
        return settings.DRIP_EMAIL_BATCH_MAX if _batches_postmark(self._connection()) else super().batch_max

    @property
    def parallel(self) -> int:  # type: ignore[override]
        """An ESP's API that takes one email per request is called side by side; the console
        and SMTP backends one after the other."""
        return settings.DRIP_EMAIL_PARALLEL if settings.EMAIL_BACKEND.startswith("anymail.") else 1

    def _connection(self) -> Any:
        key = (settings.EMAIL_BACKEND, repr(sorted(settings.ANYMAIL.items())), settings.DRIP_PROVIDER_TIMEOUT)
        return _client("email", key, _open_email_connection)

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
        email.extra_headers.update(_email_headers(message))
        return email

    def send(self, message: Message, rendered: Rendered) -> str:
        email = self._email(message, rendered)
        try:
            email.send()
        except Exception as exc:  # classified below, never swallowed
            _forget("email")
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
        if len(items) < 2 or not _batches_postmark(connection):
            return super().send_many(items)  # one request each
        # Each message's JSON is anymail's own `/email` payload; one that cannot be built
        # (an address anymail refuses) fails alone.
        built = self._postmark_payloads(connection, items)
        payloads = [p for p in built if isinstance(p, PostmarkPayload)]
        answers = iter(_post_postmark_batch(connection, payloads))
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
                built.append(_postmark_like(model, message, rendered))
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
        try:
            answer = requests.get(
                f"{_postmark_api_url()}messages/outbound",
                params={"count": "1", "offset": "0", f"metadata_{METADATA_KEY}": str(message.pk)},
                headers={"Accept": "application/json", "X-Postmark-Server-Token": _postmark_token()},
                timeout=settings.DRIP_PROVIDER_TIMEOUT,
            )
            answer.raise_for_status()
            return parse_postmark_search(answer.json(), message.pk)
        except (requests.RequestException, ValueError) as exc:
            return _lookup_failed(exc, "postmark")


def _batches_postmark(connection: Any) -> bool:
    # Postmark's bulk API (POSTMARK_USE_BULK_API) is another endpoint, and a batch of one is
    # no batch: one message per request then.
    return isinstance(connection, PostmarkBackend) and not connection.use_bulk_api and settings.DRIP_EMAIL_BATCH_MAX > 1


class _PostmarkBatch:
    """The request anymail's `post_to_esp` makes for `/email/batch`: the first message's
    request (its headers carry the server token) with, as body, the JSON list of every
    message's `/email` body. So the session, timeout and error wrapping are anymail's."""

    def __init__(self, payloads: list[PostmarkPayload]) -> None:
        self.payloads = payloads

    def get_request_params(self, api_url: str) -> dict[str, Any]:
        params = self.payloads[0].get_request_params(api_url)
        params["url"] = urljoin(api_url, "email/batch")
        params["data"] = "[" + ",".join(p.serialize_data() for p in self.payloads) + "]"
        return params


def _post_postmark_batch(connection: PostmarkBackend, payloads: list[PostmarkPayload]) -> list[Outcome]:
    """One outcome per payload: from its own answer, or the whole request's error (no answer,
    5xx, 429, a timeout...) for each, so each retries on its own backoff."""
    if not payloads:
        return []
    try:
        response = connection.post_to_esp(_PostmarkBatch(payloads), None)
        results = _postmark_batch_results(connection, response, len(payloads))
    except Exception as exc:  # classified below, never swallowed
        _forget("email")
        error = classify(exc)
        return [error] * len(payloads)
    return [classify_postmark_result(result) for result in results]


def _postmark_batch_results(connection: PostmarkBackend, response: requests.Response, count: int) -> list[dict[str, Any]]:
    """The answer's list, one result per message in order. Anything else (a 422 for the
    whole request, an unreadable 200) raises, and `classify` reads it as permanent: a 200
    may mean some were sent, so none is sent again."""
    if response.status_code != 200:
        raise AnymailRequestsAPIError(response=response, backend=connection)
    results = connection.deserialize_json_response(response, None, None)
    if not isinstance(results, list) or len(results) != count or not all(isinstance(r, dict) for r in results):
        raise AnymailRequestsAPIError(f"batch answer is not {count} results", response=response, backend=connection)
    return results


def _postmark_api_url() -> str:
    url = str(get_anymail_setting("api_url", esp_name="postmark", default=POSTMARK_API_URL))
    return url if url.endswith("/") else url + "/"


def _postmark_token() -> str:
    return str(get_anymail_setting("server_token", esp_name="postmark"))


def parse_postmark_search(answer: Any, message_id: int) -> Lookup:
    """`GET /messages/outbound` → {"TotalCount": n, "Messages": [{"MessageID", "Metadata"}...]}."""
    if not isinstance(answer, dict) or not isinstance(answer.get("Messages"), list):
        return Lookup.cannot_tell(f"postmark search answered {str(answer)[:200]!r}")
    for found in answer["Messages"]:
        metadata = found.get("Metadata") or {}
        # The filter did this already; a proxy or a future API that ignored it must not make
        # another message count as this one.
        if str(metadata.get(METADATA_KEY, message_id)) == str(message_id) and found.get("MessageID"):
            return Lookup.accepted(str(found["MessageID"]))
    return Lookup.not_found()


def _postmark_like(model: PostmarkPayload, message: Message, rendered: Rendered) -> PostmarkPayload:
    """`model` (anymail's payload of another message of the batch, same backend and send
    defaults) with this message's own fields: what anymail would build for it."""
    payload = copy.copy(model)
    data = dict(model.data)
    data.update({"To": message.to, "Subject": rendered.subject, "TextBody": rendered.text})
    if rendered.html:
        data["HtmlBody"] = rendered.html
    else:
        data.pop("HtmlBody", None)
    data["Metadata"] = {**model.data.get("Metadata", {}), METADATA_KEY: str(message.pk)}
    own = _email_headers(message)
    data["Headers"] = [{"Name": h["Name"], "Value": own.get(h["Name"], h["Value"])} for h in model.data.get("Headers", [])]
    payload.data = data
    return payload


def _email_headers(message: Message) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe (both headers must be covered by the DKIM signature:
    the operator's ESP set-up) and our own id."""
    return {
        "X-Drip-Message-Id": str(message.pk),
        "List-Unsubscribe": f"<{unsubscribe_url(message.contact_id, message.to)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


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
    _read_environment_once(client.http_client.session, settings.TWILIO_API_BASE_URL)
    return client


class TwilioSmsTransport(Transport):
    """One request per message (Twilio has no batch), side by side (DRIP_SMS_PARALLEL) from a
    prefork process; see Transport.parallel."""

    def __init__(self) -> None:
        key = (settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, settings.TWILIO_API_BASE_URL, settings.DRIP_PROVIDER_TIMEOUT)
        self.client = _client("twilio", key, _twilio_client)

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
            _forget("twilio")
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
            _forget("twilio")
            return _lookup_failed(exc, "twilio")
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


def _send_alone(kind: type[Transport], item: tuple[Message, Rendered]) -> Outcome:
    try:
        return kind().send(*item)
    except TransportError as exc:
        return exc
    except Exception as exc:  # e.g. building the client: this message's outcome, not the group's
        return classify(exc)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _request_threads(size: int) -> ThreadPoolExecutor:
    """One pool per size and process: a prefork child builds its own (threads do not
    survive a fork)."""
    key = (os.getpid(), size)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(size, thread_name_prefix="drip-send")
        return _pools[key]


def transport_for(channel: str) -> Transport:
    if channel == Channel.EMAIL:
        return EmailTransport()
    if settings.SMS_BACKEND == "twilio":
        return TwilioSmsTransport()
    return ConsoleSmsTransport()
