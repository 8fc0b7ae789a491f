"""The chaos soak's provider: one loopback process serving Postmark's `/email` and Twilio's
`Messages.json` (tests.stubs.serve_provider_api, as the tests and the benchmark), that can be
told to misbehave for a while.

    python -m bench.soak_stub RECEIPTS.jsonl

Prints its base URL on the first line of stdout, then reads commands on stdin, one a line:
`fault <mode> <seconds>` with mode `503` (answer 503, keep nothing), `hang` (hold every
request HANG_SECONDS, past the clients' 30 s timeout, then answer 503, keep nothing) or `drop`
(accept and keep the message, then close the connection without an answer: the provider has
it, the sender cannot know), and `quit`. Every request is one JSON line in RECEIPTS: its
kind, arrival time, the Drip Message id it carries and what the stub did with it, written
as it happens so a crash of the driver loses nothing.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from tests.stubs import serve_provider_api

HANG_SECONDS = 35.0  # the email and SMS clients give up after 30 s (drip.channels.PROVIDER_TIMEOUT)
ACCEPTED, REFUSED, HUNG, DROPPED = "accepted", "503", "hung", "dropped"


class DropConnection(Exception):
    """Raised from a handler: the server closes the socket without answering."""


class SoakStub:
    def __init__(self, receipts: IO[str]) -> None:
        self._receipts = receipts
        self._lock = threading.Lock()
        self._fault = ""
        self._fault_until = 0.0
        self.server, self.url = serve_provider_api(self, "soak-stub")
        # A dropped connection is on purpose: no traceback on stderr for each one.
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]

    def set_fault(self, mode: str, seconds: float) -> None:
        with self._lock:
            self._fault, self._fault_until = mode, time.time() + seconds

    def _current_fault(self) -> str:
        with self._lock:
            return self._fault if time.time() < self._fault_until else ""

    def _record(self, kind: str, message_id: str, to: str, outcome: str, at: float) -> None:
        line = json.dumps({"kind": kind, "message_id": message_id, "to": to, "outcome": outcome, "at": at})
        with self._lock:
            self._receipts.write(line + "\n")
            self._receipts.flush()

    def _handle(self, kind: str, message_id: str, to: str) -> bool:
        """Applies the current fault; True when the message is accepted and answered."""
        at = time.time()
        fault = self._current_fault()
        if fault == "hang":
            time.sleep(HANG_SECONDS)
            self._record(kind, message_id, to, HUNG, at)
            return False
        if fault == "503":
            self._record(kind, message_id, to, REFUSED, at)
            return False
        if fault == "drop":
            self._record(kind, message_id, to, DROPPED, at)
            raise DropConnection(message_id)
        self._record(kind, message_id, to, ACCEPTED, at)
        return True

    # --- the provider routes (called by serve_provider_api) ------------------------------
    def _postmark(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        data = json.loads(raw)
        headers = {h.get("Name"): h.get("Value") for h in data.get("Headers") or []}
        message_id = str(headers.get("X-Drip-Message-Id") or (data.get("Metadata") or {}).get("drip_message_id") or "")
        if not self._handle("email", message_id, data.get("To", "")):
            return 503, {"ErrorCode": 500, "Message": "soak stub: unavailable"}
        return 200, {"To": data.get("To"), "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": str(uuid.uuid4()),
                     "ErrorCode": 0, "Message": "OK"}

    def _postmark_batch(self, raw: bytes) -> tuple[int, list[dict[str, Any]]]:
        """`/email/batch`, should serve_provider_api route it here: each message on its own."""
        answers = [self._postmark(json.dumps(one).encode()) for one in json.loads(raw)]
        if any(status != 200 for status, _ in answers):
            return 503, [body for _, body in answers]
        return 200, [body for _, body in answers]

    def _twilio(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        callback = parse_qs(urlsplit(form.get("StatusCallback", "")).query)
        message_id = (callback.get("m") or [""])[0]
        if not self._handle("sms", message_id, form.get("To", "")):
            return 503, {"code": 20503, "message": "soak stub: unavailable", "status": 503}
        return 201, {"sid": "SM" + uuid.uuid4().hex, "status": "queued", "to": form.get("To"), "from": form.get("From"),
                     "body": form.get("Body"), "account_sid": "ACsoak", "num_segments": "1", "direction": "outbound-api"}


def main() -> None:
    with open(sys.argv[1], "a") as receipts:
        stub = SoakStub(receipts)
        print(stub.url, flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["fault"] and len(words) == 3:
                stub.set_fault(words[1], float(words[2]))
            elif words[:1] == ["quit"]:
                break
        stub.server.shutdown()


if __name__ == "__main__":
    main()
