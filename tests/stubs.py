"""A loopback stand-in for Postmark and Twilio: the real anymail backend and the real
twilio client talk HTTP to it, and tests assert on what it received."""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


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


@dataclass
class Failure:
    status: int
    body: dict[str, Any]


def serve_provider_api(stub: Any, thread_name: str = "provider-stub") -> tuple[ThreadingHTTPServer, str]:
    """Serve Postmark's `/email` and `/email/batch` and Twilio's `.../Messages.json` on a
    free loopback port, answering with `stub._postmark(raw)` / `stub._postmark_batch(raw)` /
    `stub._twilio(raw)` -> (status, JSON body). Shared by the tests' stub and the benchmark's."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
        # Headers and body leave in two writes; on a kept-alive connection Nagle's algorithm
        # would hold the body until the client's delayed ACK (~40 ms). Real provider front
        # ends don't do that, so neither may the stub.
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/").endswith("/email"):
                status, body = stub._postmark(raw)
            elif self.path.rstrip("/").endswith("/email/batch"):
                status, body = stub._postmark_batch(raw)
            elif "/Messages.json" in self.path:
                status, body = stub._twilio(raw)
            else:
                status, body = 404, {"error": f"no route {self.path}"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

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

    def _postmark(self, raw: bytes) -> tuple[int, dict[str, Any]]:
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
        return (200 if answer["ErrorCode"] == 0 else 422), answer

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
        return 200, [self._accept_email(data) for data in items]

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
        return 201, {"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"), "body": form.get("Body"),
                     "account_sid": "ACtest", "num_segments": "1", "direction": "outbound-api"}

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
