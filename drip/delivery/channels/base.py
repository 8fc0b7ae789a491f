"""Channels as transports (after healthchecks' hc/api/transports.py): one small class per
way of reaching a recipient, sending one message or several, and able to `lookup` whether
its provider accepted a message (by the Message id Drip attaches to every send), for a send
whose outcome is unknown. This module holds what every transport shares."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import requests

from drip.delivery.channels.errors import Outcome, TransportError, classify, transient_status
from drip.delivery.rendering import Rendered
from drip.models import Message

log = logging.getLogger("drip.channels")
# The key of the Message id in the anymail metadata of every email: each delivery report
# carries it back (drip/doors/inbound/email_reports.py), and Postmark's search filters on it.
METADATA_KEY = "drip_message_id"
T = TypeVar("T")


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


def lookup_failed(exc: Exception, provider: str) -> Lookup:
    """A lookup that got no usable answer: the network or the provider's 5xx / 429 is worth
    another try later; anything else (bad credentials, a 4xx) will not change by waiting."""
    # requests errors carry the response; twilio's list raises TwilioException(text, response).
    responses = [getattr(exc, "response", None), *exc.args]
    status = next((r.status_code for r in responses if isinstance(getattr(r, "status_code", None), int)), None)
    transient = isinstance(exc, (requests.ConnectionError, requests.Timeout)) or transient_status(status)
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


def provider_client(name: str, key: tuple, build: Callable[[], T]) -> T:
    held = getattr(_clients, name, None)
    if held is None or held[0] != key:
        forget_client(name)
        held = (key, build())
        setattr(_clients, name, held)
    return held[1]


def forget_client(name: str) -> None:
    """Drop a client after an error: its connection may be the broken part."""
    held = getattr(_clients, name, None)
    setattr(_clients, name, None)
    if held is not None and hasattr(held[1], "close"):
        try:
            held[1].close()
        except Exception:  # closing a broken connection may fail too; it is dropped anyway
            log.debug("closing %s failed", name, exc_info=True)


def read_environment_once(session: requests.Session, url: str) -> None:
    """While `trust_env` is on, requests reads the proxy variables and ~/.netrc again on
    every request (a tenth of a send's CPU). A provider client talks to one API with its own
    credentials, so it reads them once, here."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


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
