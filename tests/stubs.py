"""A loopback stand-in for Postmark and Twilio: the real anymail backend and the real
twilio client talk HTTP to it, and tests assert on what it received. It answers the
providers' lookups (Postmark's outbound search, Twilio's Messages list) from what it
recorded, and can misbehave the way a network does: accept a message, then hang past the
client's timeout or drop the connection; or drop it before reading anything."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

# What a stub answers instead of (status, body) to close the connection without a word.
DROP = 0
# The From a messaging service picks from its pool, in the stub.
POOL_NUMBER = "+15005550001"


@dataclass
class Received:
    kind: str  # "email" or "sms"
    at: float  # time.time() when the request arrived
    to: str
    subject: str = ""
    text: str = ""
    html: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    provider_id: str = ""

    @property
    def metadata(self) -> dict[str, str]:
        return self.raw.get("Metadata") or {}

    @property
    def sender(self) -> str:
        return self.raw.get("From") or (POOL_NUMBER if self.raw.get("MessagingServiceSid") else "")

    @property
    def service(self) -> str:
        return self.raw.get("MessagingServiceSid", "")

    @property
    def body(self) -> str:
        return self.text


class Record(Protocol):
    """What the lookups read of a recorded message (Received here, bench's Receipt)."""

    @property
    def kind(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def to(self) -> str: ...
    @property
    def provider_id(self) -> str: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def sender(self) -> str: ...
    @property
    def service(self) -> str: ...
    @property
    def body(self) -> str: ...


def postmark_search(records: Iterable[Record], params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """`GET /messages/outbound?count=&offset=&metadata_<key>=<value>`: newest first."""
    wanted = {k.removeprefix("metadata_"): v for k, v in params.items() if k.startswith("metadata_")}
    found = [r for r in records if r.kind == "email" and all(r.metadata.get(k) == v for k, v in wanted.items())]
    found.sort(key=lambda r: r.at, reverse=True)
    offset, count = int(params.get("offset", 0)), int(params.get("count", 100))
    return 200, {"TotalCount": len(found), "Messages": [
        {"MessageID": r.provider_id, "To": [{"Email": r.to, "Name": ""}], "Status": "Sent", "Metadata": r.metadata,
         "ReceivedAt": datetime.fromtimestamp(r.at, UTC).isoformat()}
        for r in found[offset:offset + count]
    ]}


def twilio_list(records: Iterable[Record], path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """`GET /2010-04-01/Accounts/<sid>/Messages.json?To=&From=&PageSize=`, one page, newest
    first, in the page format the twilio SDK reads (its records under "messages")."""
    found = [
        r for r in records
        if r.kind == "sms" and r.to == params.get("To", r.to) and r.sender == params.get("From", r.sender)
    ]
    found.sort(key=lambda r: r.at, reverse=True)
    size = int(params.get("PageSize", 50))
    uri = path.split("?")[0]
    return 200, {
        "messages": [_twilio_message(r) for r in found[:size]],
        "first_page_uri": f"{uri}?PageSize={size}&Page=0", "next_page_uri": None, "previous_page_uri": None,
        "page": 0, "page_size": size, "start": 0, "end": max(0, min(size, len(found)) - 1), "uri": path,
    }


def _twilio_message(r: Record) -> dict[str, Any]:
    created = format_datetime(datetime.fromtimestamp(r.at, UTC))  # RFC 2822, as Twilio's
    return {"sid": r.provider_id, "to": r.to, "from": r.sender, "body": r.body, "status": "sent",
            "messaging_service_sid": r.service or None, "date_created": created, "date_sent": created,
            "date_updated": created, "account_sid": "ACtest", "num_segments": "1", "direction": "outbound-api"}


@dataclass
class Failure:
    status: int
    body: dict[str, Any]


def route(stub: Any, method: str, target: str, raw: bytes, postmark_token: bool) -> tuple[int, Any]:
    """The providers' routes: Postmark's `/email` and `/email/batch` and Twilio's
    `.../Messages.json` answered by `stub._postmark(raw)` / `stub._postmark_batch(raw)` /
    `stub._twilio(raw)`, their lookups (`GET /messages/outbound`, `GET .../Messages.json`) by
    `stub._postmark_search(params)` / `stub._twilio_list(target, params)`; each gives
    (status, JSON body). Shared by every stub server (the tests', the soak's, the bench's)."""
    url = urlsplit(target)
    path = url.path.rstrip("/")
    if method == "POST":
        if path.endswith("/email"):
            return stub._postmark(raw)
        if path.endswith("/email/batch"):
            return stub._postmark_batch(raw)
        if path.endswith("/Messages.json"):
            return stub._twilio(raw)
    elif method == "GET":
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        if path.endswith("/messages/outbound"):
            if not postmark_token:
                return 401, {"ErrorCode": 10, "Message": "No Account or Server API tokens were supplied"}
            return stub._postmark_search(params)
        if path.endswith("/Messages.json"):
            return stub._twilio_list(target, params)
    return 404, {"error": f"no route {method} {target}"}


def serve_provider_api(stub: Any, thread_name: str = "provider-stub") -> tuple[ThreadingHTTPServer, str]:
    """Serve the providers' `route`s on a free loopback port, a thread per connection; a
    (DROP, _) answer closes the connection unanswered. Used by the tests' stub and the
    soak's (the benchmark's serves the same routes from an asyncio loop)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
        # Headers and body leave in two writes; on a kept-alive connection Nagle's algorithm
        # would hold the body until the client's delayed ACK (~40 ms). Real provider front
        # ends don't do that, so neither may the stub.
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            if stub._drops_unread(self.path):
                self.close_connection = True  # nothing read, nothing recorded, no answer
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(*route(stub, "POST", self.path, raw, bool(self.headers.get("X-Postmark-Server-Token"))))

        def do_GET(self) -> None:
            self._answer(*route(stub, "GET", self.path, b"", bool(self.headers.get("X-Postmark-Server-Token"))))

        def _answer(self, status: int, body: Any) -> None:
            if status == DROP:
                self.close_connection = True
                return
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up waiting (a hang past its timeout)
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=thread_name, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class ProviderStub:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.failures: dict[str, list[Failure]] = {"email": [], "sms": []}
        # Recipients Postmark answers with an ErrorCode (406 inactive, 300 invalid...), on
        # `/email` (HTTP 422) and inside a `/email/batch` answer alike, until reset.
        self.refused: dict[str, int] = {}
        # Every email request: ("email", 1) or ("email/batch", messages in it).
        self.email_requests: list[tuple[str, int]] = []
        self.latency = 0.0
        self.hangs: dict[str, float] = {}
        # Misbehaviours for the next requests of a kind, in order (see `misbehave`).
        self.modes: dict[str, list[str]] = {"email": [], "sms": []}
        self.hang_after_accept = 5.0
        self.lookups: list[tuple[str, dict[str, str]]] = []
        # Requests of each kind being answered now, and the most there were at once since reset.
        self.in_flight = {"email": 0, "sms": 0}
        self.most_in_flight = {"email": 0, "sms": 0}
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.server, self.url = serve_provider_api(self)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.failures = {"email": [], "sms": []}
            self.refused = {}
            self.email_requests = []
            self.latency = 0.0
            self.hangs = {}
            self.modes = {"email": [], "sms": []}
            self.lookups = []
            self.most_in_flight = {"email": 0, "sms": 0}
            self.released.set()  # hung requests answer 503 now, recording nothing
            self.released = threading.Event()

    def slow_down(self, seconds: float) -> None:
        """Answer every request this much later, as a provider under load does."""
        self.latency = seconds

    def hang(self, kind: str, seconds: float) -> None:
        """Every request of this kind waits this long (or until reset), then answers 503."""
        self.hangs[kind] = seconds

    def _hung(self, kind: str) -> bool:
        seconds = self.hangs.get(kind, 0.0)
        if seconds:
            self.released.wait(seconds)
        return bool(seconds)

    def misbehave(self, kind: str, mode: str) -> None:
        """The next request of this kind: "accept_then_hang" (recorded, then no answer for
        `hang_after_accept` seconds: past the client's timeout), "accept_then_drop"
        (recorded, then the connection closed unanswered), or "drop" (closed before reading
        the request: nothing recorded)."""
        assert mode in ("accept_then_hang", "accept_then_drop", "drop")
        with self.lock:
            self.modes[kind].append(mode)

    def _next_mode(self, kind: str, modes: tuple[str, ...]) -> str | None:
        with self.lock:
            if self.modes[kind] and self.modes[kind][0] in modes:
                return self.modes[kind].pop(0)
        return None

    def _drops_unread(self, path: str) -> bool:
        kind = "email" if path.rstrip("/").endswith("/email") else "sms"
        return self._next_mode(kind, ("drop",)) is not None

    def _after_accept(self, kind: str, answer: tuple[int, Any]) -> tuple[int, Any]:
        mode = self._next_mode(kind, ("accept_then_hang", "accept_then_drop"))
        if mode == "accept_then_hang":
            self.released.wait(self.hang_after_accept)
        return (DROP, {}) if mode else answer

    def _postmark_search(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.lookups.append(("email", params))
            records = list(self.received)
        return postmark_search(records, params)

    def _twilio_list(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.lookups.append(("sms", params))
            records = list(self.received)
        return twilio_list(records, path, params)

    def fail_next(self, kind: str, status: int, body: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.failures[kind].append(Failure(status, body or {}))

    def _next_failure(self, kind: str) -> Failure | None:
        with self.lock:
            return self.failures[kind].pop(0) if self.failures[kind] else None

    def refuse(self, to: str, error_code: int) -> None:
        """Postmark answers this recipient with `error_code` (406: inactive, 300: invalid)."""
        with self.lock:
            self.refused[to] = error_code

    @contextmanager
    def _in_flight(self, kind: str) -> Iterator[None]:
        with self.lock:
            self.in_flight[kind] += 1
            self.most_in_flight[kind] = max(self.most_in_flight[kind], self.in_flight[kind])
        try:
            yield
        finally:
            with self.lock:
                self.in_flight[kind] -= 1

    @property
    def sms_most_in_flight(self) -> int:
        return self.most_in_flight["sms"]

    @property
    def email_most_in_flight(self) -> int:
        return self.most_in_flight["email"]

    def _postmark(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._in_flight("email"):
            return self._postmark_answer(raw)

    def _postmark_answer(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        time.sleep(self.latency)
        with self.lock:
            self.email_requests.append(("email", 1))
        if self._hung("email"):
            return 503, {"ErrorCode": 500, "Message": "stub hung"}
        data = json.loads(raw)
        failure = self._next_failure("email")
        if failure:  # "{to}" in a canned error stands for the request's recipient
            body = {k: v.replace("{to}", data.get("To", "")) if isinstance(v, str) else v for k, v in failure.body.items()}
            return failure.status, body or {"ErrorCode": 500, "Message": "stub failure"}
        answer = self._accept_email(data)
        return self._after_accept("email", ((200 if answer["ErrorCode"] == 0 else 422), answer))

    def _postmark_batch(self, raw: bytes) -> tuple[int, dict[str, Any] | list[dict[str, Any]]]:
        """Postmark's batch: a 200 with one answer per message, in order; a failure queued
        with `fail_next("email", ...)` answers the whole request instead."""
        time.sleep(self.latency)
        items = json.loads(raw)
        with self.lock:
            self.email_requests.append(("email/batch", len(items)))
        if self._hung("email"):
            return 503, {"ErrorCode": 500, "Message": "stub hung"}
        failure = self._next_failure("email")
        if failure:
            return failure.status, failure.body or {"ErrorCode": 500, "Message": "stub failure"}
        return self._after_accept("email", (200, [self._accept_email(data) for data in items]))

    def _accept_email(self, data: dict[str, Any]) -> dict[str, Any]:
        """One message as Postmark answers it: recorded and given a MessageID, or refused."""
        to = data.get("To", "")
        code = self.refused.get(to)
        if code == 406:
            return {"ErrorCode": 406, "Message": f"You tried to send to a recipient that has been marked as inactive.\n Found inactive addresses: {to}.\n Inactive recipients are ones that have generated a hard bounce or a spam complaint. "}
        if code is not None:
            return {"ErrorCode": code, "Message": f"Invalid 'To' address: '{to}'."}
        message_id = str(uuid.uuid4())
        headers = {h["Name"]: h["Value"] for h in data.get("Headers", [])}
        with self.lock:
            self.received.append(
                Received("email", time.time(), to, data.get("Subject", ""), data.get("TextBody", ""),
                         data.get("HtmlBody", ""), headers, data, message_id)
            )
        return {"To": to, "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": message_id, "ErrorCode": 0, "Message": "OK"}

    def _twilio(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        with self._in_flight("sms"):
            return self._twilio_answer(raw)

    def _twilio_answer(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        time.sleep(self.latency)
        if self._hung("sms"):
            return 503, {"code": 20503, "message": "stub hung", "status": 503}
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        failure = self._next_failure("sms")
        if failure:
            return failure.status, failure.body or {"code": 20500, "message": "stub failure", "status": failure.status}
        sid = "SM" + uuid.uuid4().hex
        with self.lock:
            self.received.append(Received("sms", time.time(), form.get("To", ""), text=form.get("Body", ""), raw=form, provider_id=sid))
        return self._after_accept("sms", (201, {"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"),
                                                "body": form.get("Body"), "account_sid": "ACtest", "num_segments": "1",
                                                "direction": "outbound-api"}))

    # --- helpers for assertions ---------------------------------------------------
    def messages(self, kind: str | None = None, to: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if (kind is None or r.kind == kind) and (to is None or r.to == to)]

    def wait_for(self, count: int, timeout: float = 20.0, kind: str | None = None) -> list[Received]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.messages(kind)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"expected {count} {kind or ''} messages, got {len(self.messages(kind))}: {self.messages(kind)}")
