"""Real components: a Celery worker thread on the real Redis, the real database, and the
real anymail / twilio clients talking HTTP to a loopback stub.

Every test is in one layer (pytest.ini), worked out here from what it uses, so a new test needs
no marker; an explicit @pytest.mark.unit / integration / system wins:
  - system: it, a fixture or a tests.* function it reaches starts a process (subprocess,
    multiprocessing, playwright's browser);
  - integration: a real worker, beat, live server or the providers' HTTP stub;
  - unit: the rest (pure functions and in-process database tests).
A test outside the system layer that starts a process anyway fails, naming the marker to add."""
from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import before_task_publish

from celery_app import app as celery_app_instance
from drip.models import Channel
from tests.helpers import API_TOKEN, QUEUES, SCALE, Ticker, flush_broker
from tests.recording import RecordingTransport
from tests.stubs import ProviderStub

LAYERS = ("unit", "integration", "system")
INTEGRATION_FIXTURES = {"worker", "beat", "live_server", "stub", "providers"}
# Top-level packages whose use means a process of its own.
SPAWNERS = {"subprocess", "multiprocessing", "playwright"}


def _package_of(found: object) -> str:
    name = found.__name__ if isinstance(found, types.ModuleType) else getattr(found, "__module__", None)
    return (name or "").split(".")[0]


def _plain_function(found: object) -> types.FunctionType | None:
    found = getattr(found, "__func__", found)  # a method
    while hasattr(found, "__wrapped__"):  # a decorated function
        found = found.__wrapped__
    return found if isinstance(found, types.FunctionType) else None


def _reaches_a_process(code: types.CodeType, namespace: dict, seen: set[types.CodeType]) -> bool:
    """Whether code names a spawning package, or a function or class of tests.* that does."""
    if code in seen:
        return False
    seen.add(code)
    for name in code.co_names:
        found = namespace.get(name)
        if SPAWNERS & {name.split(".")[0], _package_of(found)}:  # (an import inside a function too)
            return True
        if _package_of(found) != "tests":
            continue
        for candidate in vars(found).values() if isinstance(found, type) else [found]:
            function = _plain_function(candidate)
            if function and _reaches_a_process(function.__code__, function.__globals__, seen):
                return True
    return any(isinstance(const, types.CodeType) and _reaches_a_process(const, namespace, seen)
               for const in code.co_consts)


def layer_of(item: pytest.Item) -> str:
    fixturenames: list[str] = getattr(item, "fixturenames", [])
    candidates: list[object] = [getattr(item, "function", None)]
    fixtures = getattr(item, "_fixtureinfo", None)  # pytest has no public view of an item's fixtures
    if fixtures is not None:
        for name in fixturenames:
            candidates += [definition.func for definition in fixtures.name2fixturedefs.get(name, ())]
    seen: set[types.CodeType] = set()
    for candidate in candidates:
        function = _plain_function(candidate)
        if (function and _package_of(function) == "tests"
                and _reaches_a_process(function.__code__, function.__globals__, seen)):
            return "system"
    return "integration" if INTEGRATION_FIXTURES & set(fixturenames) else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(layer) for layer in LAYERS):
            item.add_marker(getattr(pytest.mark, layer_of(item)))


_running: list[pytest.Item] = []


def _refuse_processes_outside_the_system_layer(event: str, args: tuple) -> None:
    if event in ("subprocess.Popen", "os.posix_spawn", "os.fork") and _running:
        item = _running[-1]
        if not item.get_closest_marker("system"):
            raise RuntimeError(f"{item.nodeid} starts a process ({event} {args[:2]!r}) outside the system "
                               "layer: mark it @pytest.mark.system")


sys.addaudithook(_refuse_processes_outside_the_system_layer)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


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
def api(client, settings, db) -> Callable[..., Any]:
    """POST /api/events as a producer does, with the bearer token set up (tests.helpers.API_TOKEN)."""
    settings.DRIP_API_TOKEN = API_TOKEN

    def post(body: Any, token: str | None = API_TOKEN, path: str = "/api/events") -> Any:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return client.post(path, data=data, content_type="application/json", headers=headers)

    return post


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
    monkeypatch.setattr("drip.delivery.sender.transport_for", lambda channel: transport)
    return transport
