"""A lean loopback Postmark + Twilio for the benchmark.

The real anymail Postmark backend and the real twilio client talk HTTP to it, exactly as
they do in tests/stubs.py, but this one keeps only what the figures need (kind, recipient,
arrival time, and what the providers' lookups match on) so that at thousands of messages
the stub is never what is measured. It speaks HTTP/1.1 with keep-alive, so a client that
reuses its connection can.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.stubs import POOL_NUMBER, postmark_search, serve_provider_api, twilio_list


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
        self.server, self.url = serve_provider_api(self, "bench-stub")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _record(self, receipt: Receipt) -> None:
        with self._lock:
            self._receipts.append(receipt)

    def _postmark(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        time.sleep(self.latency)
        data = json.loads(raw)
        to, message_id = data.get("To", ""), str(uuid.uuid4())
        self._record(Receipt("email", to, time.time(), message_id, data.get("Metadata") or {}))
        return 200, {"To": to, "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": message_id,
                     "ErrorCode": 0, "Message": "OK"}

    def _postmark_batch(self, raw: bytes) -> tuple[int, list[dict[str, Any]]]:
        time.sleep(self.latency)
        answers = []
        for data in json.loads(raw):
            to, message_id = data.get("To", ""), str(uuid.uuid4())
            self._record(Receipt("email", to, time.time(), message_id, data.get("Metadata") or {}))
            answers.append({"To": to, "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": message_id,
                            "ErrorCode": 0, "Message": "OK"})
        return 200, answers

    def _twilio(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        time.sleep(self.latency)
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

    def _drops_unread(self, path: str) -> bool:
        return False  # the benchmark's provider never misbehaves

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
