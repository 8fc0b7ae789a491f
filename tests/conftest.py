"""Real components: a Celery worker thread on the real Redis, the real database, and the
real anymail / twilio clients talking HTTP to a loopback stub."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish

from celery_app import app as celery_app_instance
from drip.models import Channel
from tests.helpers import QUEUES, SCALE, Ticker, flush_broker
from tests.recording import RecordingTransport
from tests.stubs import ProviderStub


@pytest.fixture(scope="session")
def stub() -> Iterator[ProviderStub]:
    server = ProviderStub()
    yield server
    server.close()


@pytest.fixture
def providers(settings, stub: ProviderStub) -> ProviderStub:
    """Production backends (anymail Postmark, twilio) pointed at the loopback stub."""
    stub.reset()
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "test-server-token", "POSTMARK_API_URL": stub.url + "/"}
    settings.SMS_BACKEND = "twilio"
    settings.TWILIO_ACCOUNT_SID = "ACtest"
    settings.TWILIO_AUTH_TOKEN = "test-auth-token"
    settings.TWILIO_FROM_NUMBER = "+15005550006"
    settings.TWILIO_API_BASE_URL = stub.url
    settings.DRIP_RETRY_BASE_DELAY = 0.2
    settings.DRIP_RETRY_MAX_DELAY = 1.0
    return stub


@pytest.fixture
def scaled(settings):
    """Funnel time compressed: a day in a few seconds (tests.helpers.SCALE)."""
    settings.DRIP_TIME_SCALE = SCALE
    return settings


@pytest.fixture
def celery_app():
    return celery_app_instance


@pytest.fixture
def worker(transactional_db, providers, celery_app) -> Iterator[object]:
    flush_broker()
    with start_worker(
        celery_app, pool="threads", concurrency=4, perform_ping_check=False,
        queues=QUEUES, shutdown_timeout=30, loglevel="WARNING",
    ) as w:
        yield w
    flush_broker()


@pytest.fixture
def beat(worker, settings) -> Iterator[Ticker]:
    settings.DRIP_RECONCILE_GRACE = 1.0
    ticker = Ticker(0.2)
    ticker.thread.start()
    yield ticker
    ticker.stop.set()
    ticker.thread.join()


@pytest.fixture
def published() -> Iterator[list[tuple[str, list, object]]]:
    """Every task this process publishes, as (task name, args, eta): the real publish, seen
    through Celery's own signal."""
    seen: list[tuple[str, list, object]] = []

    def record(sender: str, body: tuple, headers: dict, **kwargs: object) -> None:
        seen.append((headers["task"], list(body[0]), headers.get("eta")))

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch, settings) -> RecordingTransport:
    """Our channel factory hands out the recording transport; no rate limit (no Redis)."""
    settings.DRIP_RATE_LIMITS = {Channel.EMAIL: 0.0, Channel.SMS: 0.0}
    settings.DRIP_RETRY_BASE_DELAY = 10.0
    settings.DRIP_RETRY_MAX_DELAY = 600.0
    settings.DRIP_SEND_MAX_ATTEMPTS = 5
    transport = RecordingTransport()
    monkeypatch.setattr("drip.sender.transport_for", lambda channel: transport)
    return transport
