"""drip.twilio_http: the twilio client's requests, prepared without requests' session
machinery, must be the requests twilio's own HTTP client makes, byte for byte where it counts,
and fail with the same requests errors (channels.classify reads them)."""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from drip.delivery.channels import classify
from drip.delivery.twilio_http import LeanTwilioHttpClient, form_pairs

SID = "AC" + "1" * 32


class Capture:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: tuple[int, dict[str, Any]] = (201, {"sid": "SM" + "2" * 32, "status": "queued"})
        self.delay = 0.0


@pytest.fixture
def capture() -> Iterator[tuple[Capture, str]]:
    seen = Capture()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                  "form": parse_qsl(body.decode(), keep_blank_values=True)})
            if seen.delay:
                threading.Event().wait(seen.delay)
            status, answer = seen.answer
            raw = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:  # the client gave up waiting (the timeout test)
                pass

        do_POST = do_GET = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield seen, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _client(http: type[TwilioHttpClient], url: str, timeout: float = 5) -> Client:
    client = Client(SID, "secret-token", http_client=http(timeout=timeout, pool_connections=True))
    client.api.base_url = url
    return client


def _create(client: Client) -> Any:
    return client.messages.create(
        to="+15005550006", from_="+15005550001", body="Café at 3 PM & more: 50% off? Reply STOP to opt out.",
        status_callback="http://127.0.0.1:8000/webhooks/twilio/status/?m=7", validity_period=3600,
    )


def test_it_sends_the_request_twilio_own_client_sends(capture: tuple[Capture, str]) -> None:
    seen, url = capture
    sent = [_create(_client(http, url)) for http in (TwilioHttpClient, LeanTwilioHttpClient)]
    assert [m.sid for m in sent] == ["SM" + "2" * 32] * 2
    theirs, ours = seen.requests
    assert ours["method"] == theirs["method"] == "POST"
    assert ours["path"] == theirs["path"] == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert ours["form"] == theirs["form"]
    assert ("Body", "Café at 3 PM & more: 50% off? Reply STOP to opt out.") in ours["form"]
    for header in ("Authorization", "Content-Type", "Content-Length", "User-Agent", "Accept", "Accept-Charset", "X-Twilio-Client"):
        assert ours["headers"].get(header) == theirs["headers"].get(header), header


def test_it_sends_lists_and_query_parameters_as_twilio_does(capture: tuple[Capture, str]) -> None:
    seen, url = capture
    seen.answer = (200, {"messages": [], "next_page_uri": None})
    for http in (TwilioHttpClient, LeanTwilioHttpClient):
        _client(http, url).messages.list(to="+15005550006", from_="+15005550001", limit=5)
    theirs, ours = seen.requests
    assert ours["method"] == theirs["method"] == "GET"
    assert ours["path"] == theirs["path"] and "To=%2B15005550006" in ours["path"]
    assert ours["headers"].get("Authorization") == theirs["headers"].get("Authorization")
    assert form_pairs({"MediaUrl": ["a", "b"], "Skip": None, "N": 3}) == [("MediaUrl", "a"), ("MediaUrl", "b"), ("N", 3)]


def test_a_twilio_error_answer_is_twilio_own_exception(capture: tuple[Capture, str]) -> None:
    seen, url = capture
    seen.answer = (400, {"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400})
    with pytest.raises(TwilioRestException) as raised:
        _create(_client(LeanTwilioHttpClient, url))
    error = classify(raised.value)
    assert raised.value.code == 21211 and error.permanent and not error.maybe_sent


def test_no_answer_in_time_may_have_been_sent(capture: tuple[Capture, str]) -> None:
    seen, url = capture
    seen.delay = 1.0
    with pytest.raises(requests.ReadTimeout) as raised:
        _create(_client(LeanTwilioHttpClient, url, timeout=0.2))
    assert classify(raised.value).maybe_sent


def test_nothing_listening_is_a_plain_retry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError) as raised:
        _create(_client(LeanTwilioHttpClient, f"http://127.0.0.1:{port}"))
    error = classify(raised.value)
    assert not error.permanent and not error.maybe_sent
