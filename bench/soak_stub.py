"""The chaos soak's provider: one loopback process serving Postmark's `/email` and Twilio's
`Messages.json` (tests.stubs.serve_provider_api, as the tests), that can be
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

from bench.stub import Receipt
from tests.stubs import DROP, POOL_NUMBER, postmark_search, serve_provider_api, twilio_list

HANG_SECONDS = 35.0  # the email and SMS clients give up after 30 s (DRIP_PROVIDER_TIMEOUT)
ACCEPTED, REFUSED, HUNG, DROPPED = "accepted", "503", "hung", "dropped"


class SoakStub:
    def __init__(self, receipts: IO[str]) -> None:
        self._receipts = receipts
        self._lock = threading.Lock()
        self._fault = ""
        self._fault_until = 0.0
        # What the provider accepted (a dropped answer included): the lookups answer from it,
        # as Postmark's outbound search and Twilio's Messages list would. Indexed by what the
        # lookups ask for (an email's metadata, an SMS's recipient): a scan of 80,000 receipts
        # per lookup made this one process the slowest part of a recovery.
        self._by_metadata: dict[tuple[str, str], list[Receipt]] = {}
        self._by_to: dict[str, list[Receipt]] = {}
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

    def _handle(self, kind: str, message_id: str, accepted: Receipt, fault: str, hang: bool = True) -> str:
        """Applies `fault` (the one in force when the request came): ACCEPTED (kept and
        answered), DROPPED (kept, the connection closed unanswered), or REFUSED / HUNG
        (nothing kept, a 503)."""
        if fault == "hang":
            if hang:
                time.sleep(HANG_SECONDS)
            self._record(kind, message_id, accepted.to, HUNG, accepted.at)
            return HUNG
        if fault == "503":
            self._record(kind, message_id, accepted.to, REFUSED, accepted.at)
            return REFUSED
        outcome = DROPPED if fault == "drop" else ACCEPTED
        with self._lock:
            for key_value in accepted.metadata.items():
                self._by_metadata.setdefault(key_value, []).append(accepted)
            if kind == "sms":
                self._by_to.setdefault(accepted.to, []).append(accepted)
        self._record(kind, message_id, accepted.to, outcome, accepted.at)
        return outcome

    # --- the provider routes (called by serve_provider_api) ------------------------------
    def _postmark(self, raw: bytes) -> tuple[int, Any]:
        return self._email(json.loads(raw))

    def _email(self, data: dict[str, Any], fault: str | None = None, hang: bool = True) -> tuple[int, Any]:
        headers = {h.get("Name"): h.get("Value") for h in data.get("Headers") or []}
        metadata = data.get("Metadata") or {}
        message_id = str(headers.get("X-Drip-Message-Id") or metadata.get("drip_message_id") or "")
        receipt = Receipt("email", data.get("To", ""), time.time(), str(uuid.uuid4()), metadata)
        outcome = self._handle("email", message_id, receipt, self._current_fault() if fault is None else fault, hang)
        if outcome in (REFUSED, HUNG):
            return 503, {"ErrorCode": 500, "Message": "soak stub: unavailable"}
        answer = {"To": receipt.to, "SubmittedAt": "2026-01-01T00:00:00Z", "MessageID": receipt.provider_id,
                  "ErrorCode": 0, "Message": "OK"}
        return (DROP if outcome == DROPPED else 200), answer

    def _postmark_batch(self, raw: bytes) -> tuple[int, Any]:
        """`/email/batch`: the fault in force when the request came applies to all of it, as
        one request (a hang holds it once, not once per message: held message by message, a
        batch outlived the fault and its last messages were accepted a minute after the
        client gave up, which no provider does). Answered only when every one was accepted."""
        fault = self._current_fault()
        if fault == "hang":
            time.sleep(HANG_SECONDS)
        answers = [self._email(one, fault, hang=False) for one in json.loads(raw)]
        statuses = {status for status, _ in answers}
        if DROP in statuses:
            return DROP, {}
        if statuses != {200}:
            return 503, {"ErrorCode": 500, "Message": "soak stub: unavailable"}
        return 200, [body for _, body in answers]

    def _twilio(self, raw: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        callback = parse_qs(urlsplit(form.get("StatusCallback", "")).query)
        message_id = (callback.get("m") or [""])[0]
        service = form.get("MessagingServiceSid", "")
        sender = form.get("From") or (POOL_NUMBER if service else "")
        receipt = Receipt("sms", form.get("To", ""), time.time(), "SM" + uuid.uuid4().hex, {}, sender, service, form.get("Body", ""))
        outcome = self._handle("sms", message_id, receipt, self._current_fault())
        if outcome in (REFUSED, HUNG):
            return 503, {"code": 20503, "message": "soak stub: unavailable", "status": 503}
        answer = {"sid": receipt.provider_id, "status": "queued", "to": receipt.to, "from": sender, "body": receipt.body,
                  "account_sid": "ACsoak", "num_segments": "1", "direction": "outbound-api"}
        return (DROP if outcome == DROPPED else 201), answer

    # --- the lookups (Drip's "verifying": did the provider accept it?) --------------------
    def _postmark_search(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Drip asks by one metadata key (its Message id); the shared search filters the rest."""
        wanted = [(k.removeprefix("metadata_"), v) for k, v in params.items() if k.startswith("metadata_")]
        with self._lock:
            candidates = list(self._by_metadata.get(wanted[0], [])) if wanted else []
        return postmark_search(candidates, params)

    def _twilio_list(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            candidates = list(self._by_to.get(params.get("To", ""), []))
        return twilio_list(candidates, path, params)

    def _drops_unread(self, path: str) -> bool:
        return False  # the soak's faults apply after the request is read


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
