"""A lean loopback Postmark + Twilio for the benchmark.

The real anymail Postmark backend and the real twilio client talk HTTP to it, exactly as
they do in tests/stubs.py, but this one keeps only what the figures need (kind, recipient,
arrival time, and what the providers' lookups match on) so that at thousands of messages
the stub is never what is measured. It speaks HTTP/1.1 with keep-alive, so a client that
reuses its connection can.

It serves from one asyncio loop on its own thread (`_AsyncServer`), not from
tests.stubs.serve_provider_api's thread per connection: a real provider spends none of the
measured machine's CPU, and http.server's request parsing (the email package) and thread
switches cost about 0.3 ms of it per request, a fifth of an SMS's whole cost. A slow provider
(`latency`) is a timer per request, so concurrent requests wait side by side.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from tests.stubs import POOL_NUMBER, postmark_search, route, twilio_list


@dataclass(frozen=True)
class Receipt:
    kind: str  # "email" or "sms"
    to: str
    at: float  # time.time() when the request was accepted
    # What a lookup (tests.stubs.postmark_search / twilio_list) matches on and answers.
    provider_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    sender: str = ""
    service: str = ""
    body: str = ""


class BenchStub:
    def __init__(self) -> None:
        self._receipts: list[Receipt] = []
        self._lock = threading.Lock()
        # Seconds before each answer, as a real provider's (the server is threaded, so
        # concurrent requests wait side by side).
        self.latency = 0.0
        self.server = _AsyncServer(self)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()

    def _record(self, receipt: Receipt) -> None:
        with self._lock:
            self._receipts.append(receipt)

    def _postmark(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        data = json.loads(raw)
        to, message_id = data.get("To", ""), str(uuid.uuid4())
        self._record(Receipt("email", to, time.time(), message_id, data.get("Metadata") or {}))
        return 200, {"To": to, "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": message_id,
                     "ErrorCode": 0, "Message": "OK"}

    def _postmark_batch(self, raw: bytes) -> tuple[int, list[dict[str, Any]]]:
        answers = []
        for data in json.loads(raw):
            to, message_id = data.get("To", ""), str(uuid.uuid4())
            self._record(Receipt("email", to, time.time(), message_id, data.get("Metadata") or {}))
            answers.append({"To": to, "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": message_id,
                            "ErrorCode": 0, "Message": "OK"})
        return 200, answers

    def _twilio(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        sid, service = "SM" + uuid.uuid4().hex, form.get("MessagingServiceSid", "")
        sender = form.get("From") or (POOL_NUMBER if service else "")
        self._record(Receipt("sms", form.get("To", ""), time.time(), sid, {}, sender, service, form.get("Body", "")))
        return 201, {"sid": sid, "status": "queued", "to": form.get("To"), "from": form.get("From"),
                     "body": form.get("Body"), "account_sid": "ACbench", "num_segments": "1",
                     "direction": "outbound-api"}

    def _postmark_search(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return postmark_search(self.receipts(), params)

    def _twilio_list(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        return twilio_list(self.receipts(), path, params)

    # --- for the figures ------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return len(self._receipts)

    def receipts(self) -> list[Receipt]:
        with self._lock:
            return list(self._receipts)

    def reset(self) -> None:
        with self._lock:
            self._receipts.clear()

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once `count` receipts arrived; False at the deadline (the caller reports it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= count:
                return True
            time.sleep(0.02)
        return self.count() >= count


class _Connection(asyncio.Protocol):
    """One kept-alive client connection: requests in, one at a time (no client here
    pipelines), each answered after the stub's latency."""

    def __init__(self, stub: BenchStub) -> None:
        self.stub = stub
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length") or 0)
            if len(self.buffer) < end + 4 + length:
                return  # the body is still on its way
            raw = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            if self.stub.latency:
                asyncio.get_running_loop().call_later(self.stub.latency, self._answer, method, target, headers, raw)
            else:
                self._answer(method, target, headers, raw)

    def _answer(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        status, body = route(self.stub, method, target, raw, bool(headers.get("x-postmark-server-token")))
        payload = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n")
        self.transport.write(head.encode() + payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _AsyncServer:
    """The stub's loop, on a daemon thread, listening on a free loopback port."""

    def __init__(self, stub: BenchStub) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(stub, ready), name="bench-stub", daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, stub: BenchStub, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(lambda: _Connection(stub), "127.0.0.1", 0, reuse_address=True)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        def stop() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)
