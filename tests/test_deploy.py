"""Production settings fail closed (issue 19, item 6): `check --deploy` is clean under a
production environment and warns as soon as one protection is turned off; no fallback
SECRET_KEY; SECRET_KEY_FALLBACKS keeps old unsubscribe links working; /metrics needs its
token without DEBUG; /healthz answers from a recent result and names no host, user or
password; the access log never records an unsubscribe token; the API and the commands
leave audit lines naming the caller, never the token."""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from django.core import signing
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from drip.domain.tokens import UNSUBSCRIBE_SALT, make_token
from drip.models import Channel, Worker
from drip.ops import health
from tests.factories import enroll, make_contact, make_event
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def production(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What an operator sets in production (docs/configuration.md), and nothing else."""
    return {
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "drip.settings", "DRIP_DOTENV": "0", "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "drip.example.org",
        "PUBLIC_BASE_URL": "https://drip.example.org", "CSRF_TRUSTED_ORIGINS": "https://drip.example.org",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
        "DRIP_API_TOKEN": secrets.token_urlsafe(32), "DRIP_METRICS_TOKEN": secrets.token_urlsafe(32),
        "ANYMAIL_WEBHOOK_SECRET": "hooks:" + secrets.token_urlsafe(24),
        "DRIP_SENDER_ADDRESS": "Drip Inc., 1 Example Street, Springfield",
        **extra,
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def settings_of(env: dict[str, str], *names: str) -> dict[str, Any]:
    code = f"import json; from django.conf import settings as s; print(json.dumps({{n: getattr(s, n) for n in {list(names)!r}}}))"
    result = manage(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- check --deploy ---------------------------------------------------------------------


def test_check_deploy_is_clean_under_a_production_environment(tmp_path):
    result = manage(production(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout
    # Silenced, each with its reason in drip/settings.py: HSTS preload (the registered
    # domain's decision, not this service's) and axes' lockout by address (behind a proxy
    # every client has the proxy's).
    silenced = settings_of(production(tmp_path), "SILENCED_SYSTEM_CHECKS")["SILENCED_SYSTEM_CHECKS"]
    assert "security.W021" in silenced and set(silenced) <= {"security.W021", "axes.W006"}, silenced


@pytest.mark.parametrize("turned_off,warning", [
    ({"SESSION_COOKIE_SECURE": "0"}, "security.W012"),
    ({"CSRF_COOKIE_SECURE": "0"}, "security.W016"),
    ({"SECURE_SSL_REDIRECT": "0"}, "security.W008"),
    ({"SECURE_HSTS_SECONDS": "0"}, "security.W004"),
    ({"SECRET_KEY": "short-and-known"}, "security.W009"),
    ({"SECRET_KEY_FALLBACKS": "weak"}, "security.W025"),
    ({"DEBUG": "1"}, "security.W018"),
])
def test_turning_one_protection_off_is_a_deploy_warning(tmp_path, turned_off, warning):
    result = manage(production(tmp_path, **turned_off), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0 and warning in result.stderr, result.stdout + result.stderr


# --- the settings themselves --------------------------------------------------------------

SECURITY = ("SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
            "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "CSRF_TRUSTED_ORIGINS", "SECRET_KEY_FALLBACKS")


def test_without_debug_every_protection_is_on_by_default(tmp_path):
    env = production(tmp_path, SECRET_KEY_FALLBACKS="old-key-2, old-key-1")
    del env["CSRF_TRUSTED_ORIGINS"]
    assert settings_of(env, *SECURITY) == {
        "SECURE_SSL_REDIRECT": True, "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_HSTS_SECONDS": 31_536_000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True, "CSRF_TRUSTED_ORIGINS": [],
        "SECRET_KEY_FALLBACKS": ["old-key-2", "old-key-1"],
    }


def test_under_debug_they_are_off_for_plain_http_on_loopback(tmp_path):
    found = settings_of(production(tmp_path, DEBUG="1"), "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER",
                        "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE")
    assert found == {"SECURE_SSL_REDIRECT": False, "SECURE_PROXY_SSL_HEADER": None, "SECURE_HSTS_SECONDS": 0,
                     "SESSION_COOKIE_SECURE": False, "CSRF_COOKIE_SECURE": False}


def test_the_proxy_header_is_named_as_the_proxy_sends_it(tmp_path):
    env = production(tmp_path, DRIP_PROXY_SSL_HEADER="X-Forwarded-Scheme: https")
    assert settings_of(env, "SECURE_PROXY_SSL_HEADER") == {"SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_SCHEME", "https"]}
    assert settings_of(production(tmp_path, DRIP_PROXY_SSL_HEADER="off"), "SECURE_PROXY_SSL_HEADER") == {
        "SECURE_PROXY_SSL_HEADER": None}
    result = manage(production(tmp_path, DRIP_PROXY_SSL_HEADER="X-Forwarded-Proto"), "check")
    assert result.returncode != 0 and "DRIP_PROXY_SSL_HEADER must be 'Header-Name: value' or off" in result.stderr


@pytest.mark.parametrize("debug", ["0", "1"])
def test_there_is_no_fallback_secret_key(tmp_path, debug):
    result = manage(production(tmp_path, DEBUG=debug, SECRET_KEY=""), "check")
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr
    assert "dev-only" not in (ROOT / "drip" / "settings.py").read_text()


def test_the_web_redirects_http_to_https_but_not_the_health_probe(tmp_path):
    code = ("from django.test import Client; c = Client(); "
            "print(c.get('/admin/').status_code, c.get('/admin/', headers={'X-Forwarded-Proto': 'https'}).status_code)")
    env = production(tmp_path, ALLOWED_HOSTS="testserver")
    result = manage(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    plain, behind_proxy = result.stdout.split()[-2:]
    assert (plain, behind_proxy) == ("301", "302")  # https: the console's login redirect


# --- key rotation ---------------------------------------------------------------------------


def test_an_unsubscribe_link_signed_with_the_old_key_works_after_a_rotation(db, client, settings):
    contact = make_contact(external_id="c-rotate", email="rotate@example.com")
    settings.SECRET_KEY = old = secrets.token_urlsafe(50)
    token = make_token(contact.pk, Channel.EMAIL, contact.email)
    settings.SECRET_KEY = secrets.token_urlsafe(50)

    settings.SECRET_KEY_FALLBACKS = []
    assert client.get(f"/u/{token}/").status_code == 400  # without the old key: refused
    with pytest.raises(signing.BadSignature):
        signing.Signer(salt=UNSUBSCRIBE_SALT).unsign(token)

    settings.SECRET_KEY_FALLBACKS = [old]
    assert client.get(f"/u/{token}/").status_code == 200
    signing.Signer(salt=UNSUBSCRIBE_SALT).unsign(token)
    response = client.post(f"/u/{token}/", {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    from drip.domain.consent import has_consent

    contact.refresh_from_db()
    assert not has_consent(contact, Channel.EMAIL)


# --- /metrics and /healthz ------------------------------------------------------------------


def test_metrics_without_debug_need_the_token_even_from_loopback(db, client, settings):
    settings.DEBUG = False
    settings.DRIP_METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    settings.DRIP_METRICS_TOKEN = "scrape-token"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-token"}).status_code == 200


@pytest.fixture
def cached_health(settings):
    settings.DRIP_HEALTH_CACHE_SECONDS = 2.0
    health.forget_checks()
    yield settings
    health.forget_checks()


def test_a_flood_of_healthz_runs_the_checks_once_per_two_seconds(db, client, cached_health):
    with CaptureQueriesContext(connection) as queries:
        answers = {client.get("/healthz").content for _ in range(50)}
    assert len(answers) == 1
    assert sum(1 for q in queries.captured_queries if q["sql"].strip().upper() == "SELECT 1") == 1


def test_healthz_answers_from_a_result_at_most_the_cache_age_old(db, client, cached_health):
    cached_health.DRIP_HEALTH_CACHE_SECONDS = 0.5
    first = client.get("/healthz").json()
    now = timezone.now()
    Worker.objects.create(name="deploy-test@host", started_at=now, seen_at=now)  # the worker check changes
    assert client.get("/healthz").json() == first  # within the age: the same result
    wait_until(lambda: client.get("/healthz").json()["checks"]["worker"] == "ok", timeout=3)


def test_healthz_names_no_host_user_or_password(tmp_path):
    env = production(
        tmp_path, ALLOWED_HOSTS="testserver",
        DATABASE_URL="postgres://secretuser:secretpw@127.0.0.7:1/secretdb",
        REDIS_URL="redis://redisuser:redispw@127.0.0.8:1/0",
    )
    code = "from django.test import Client; r = Client().get('/healthz'); print(r.status_code); print(r.content.decode())"
    result = manage(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    status, body = result.stdout.strip().splitlines()[-2:]
    assert status == "503"  # not 301: the probe may speak plain http
    checks = json.loads(body)["checks"]
    assert checks["database"].startswith("database unreachable") and checks["broker"].startswith("broker unreachable")
    for secret in ("secretuser", "secretpw", "secretdb", "127.0.0.7", "redisuser", "redispw", "127.0.0.8", ":1"):
        assert secret not in body, (secret, body)
    # The operator still learns what went wrong, from the log, credentials cut out.
    assert "healthz: database check failed" in result.stderr and "redispw" not in result.stderr


# --- the access log --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_access_log_never_records_an_unsubscribe_token(tmp_path):
    """The Procfile's own web command, a real gunicorn: the token is redacted in the request
    line and the referer, and in Django's "Bad Request" line."""
    web = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))[4:]
    port = free_port()
    command = web.replace("${WEB_BIND:-0.0.0.0}", "127.0.0.1").replace("${PORT:-8000}", str(port))
    assert "$" not in command, command
    env = production(tmp_path, DEBUG="1", ALLOWED_HOSTS="127.0.0.1")
    log = tmp_path / "web.log"
    with log.open("w") as out:
        process = subprocess.Popen(shlex.split(command), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    token = "c2VjcmV0LXRva2Vu:Zm9yZ2VkLXNpZ25hdHVyZQ"
    try:
        def up() -> bool:
            try:
                urlopen(f"http://127.0.0.1:{port}/api/events/schema", timeout=1).read()
                return True
            except OSError:
                return False

        wait_until(up, timeout=30)
        for method in ("GET", "POST"):
            request = Request(f"http://127.0.0.1:{port}/u/{token}/", method=method,
                              headers={"Referer": f"https://drip.example.org/u/{token}/"},
                              data=b"List-Unsubscribe=One-Click" if method == "POST" else None)
            with pytest.raises(HTTPError) as refused:
                urlopen(request, timeout=5)
            assert refused.value.code == 400  # a forged token
        wait_until(lambda: log.read_text().count("/u/[token]/") >= 4, timeout=10)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    # The access log's lines and Django's "Bad Request" lines (drip.doors.inbound's own warning is
    # the unsubscribe view's, not the access log's).
    lines = [line for line in log.read_text().splitlines() if "drip.inbound" not in line]
    assert not [line for line in lines if token.split(":")[0] in line or token.split(":")[1] in line], lines
    assert re.search(r'"GET /u/\[token\]/ HTTP/1\.1" 400 \d+ "https://drip.example.org/u/\[token\]/"', "\n".join(lines)), lines
    assert "Bad Request: /u/[token]/" in lines


# --- audit lines: who did it, never the token -----------------------------------------------


def test_the_api_logs_the_callers_token_fingerprint_never_the_token(db, client, settings, caplog):
    settings.DRIP_API_TOKEN = token = secrets.token_urlsafe(32)
    event = make_event(external_id="e-audit")
    body = {"name": "event.rescheduled", "data": {"eventId": event.external_id, "scheduledAt": "2031-01-01T10:00:00Z"}}
    with caplog.at_level("INFO", logger="drip.audit"):
        response = client.post("/api/events", data=json.dumps(body), content_type="application/json",
                               headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 202, response.json()
    fingerprint = hashlib.sha256(token.encode()).hexdigest()[:8]
    lines = [r.getMessage() for r in caplog.records if r.name == "drip.audit"]
    assert lines == [f"event API: producer token sha256:{fingerprint}: accepted 1 event(s): event.rescheduled"]
    assert token not in caplog.text


def test_the_commands_log_the_os_user_and_what_they_did(db, caplog):
    event = make_event(external_id="e-shell", starts_in=-7200)
    enroll(make_contact(), event)
    body = json.dumps({"name": "event.rescheduled", "data": {"eventId": "e-shell", "scheduledAt": "2031-01-01T10:00:00Z"}})
    with caplog.at_level("INFO", logger="drip.audit"):
        call_command("send_event", body, stdout=open(os.devnull, "w"))
        event.refresh_from_db()
        call_command("complete_event", "e-shell", "--force", stdout=open(os.devnull, "w"))
    lines = [r.getMessage() for r in caplog.records if r.name == "drip.audit"]
    user = getpass.getuser()
    assert lines[0] == f"send_event: OS user {user}: accepted 1 event(s): event.rescheduled"
    assert lines[1].startswith(f"complete_event: OS user {user}: completed event e-shell (attended 0, no-show 1,")


def test_a_refused_request_is_logged_by_field_without_the_value(db, client, settings, caplog):
    settings.DRIP_API_TOKEN = "t0ken"
    body = {"name": "event.enrolled", "data": {"contactEmail": "victim@example.com"}}
    with caplog.at_level("INFO", logger="drip.api"):
        client.post("/api/events", data=json.dumps(body), content_type="application/json",
                    headers={"Authorization": "Bearer t0ken"})
    assert "victim@example.com" not in caplog.text and "t0ken" not in caplog.text
    assert "refused a request from producer token sha256:" in caplog.text

