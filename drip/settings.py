"""Drip settings: every knob comes from the environment (docs/configuration.md).

Development works with no environment at all when DEBUG=1; production settings that are
missing stop the process at start-up with one sentence naming the variable.
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from drip.domain.pacing import parse_frequency_cap, parse_quiet_hours

BASE_DIR = Path(__file__).resolve().parent.parent

# The development settings `make run` writes on first run (README "Quick start"), so every
# process and a second terminal share them. Real environment variables win (override=False).
# DRIP_DOTENV_PATH names another file; DRIP_DOTENV=0 skips it (the tests do: tests/settings.py).
if os.environ.get("DRIP_DOTENV", "1").lower() not in ("0", "false", "no", "off"):
    load_dotenv(os.environ.get("DRIP_DOTENV_PATH") or BASE_DIR / ".env", override=False)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    """A comma-separated variable; unset or empty gives `default`."""
    items = [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]
    return items or list(default or [])


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {raw!r}")
    return value


DEBUG = env_bool("DEBUG")
# No fallback key, even under DEBUG: a key everybody knows signs unsubscribe links anybody can
# forge, and a key made up per process breaks a link signed by another. `make run` writes a
# random one to .env on first run; tests/settings.py sets its own.
SECRET_KEY = os.environ.get("SECRET_KEY") or ""
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY must be set: in production in the environment; for development `make run` writes a random one to .env."
    )
# Earlier keys, still accepted when a signature is checked (newest first, comma-separated):
# rotating SECRET_KEY keeps every unsubscribe link already sent working.
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
if DEBUG and not ALLOWED_HOSTS:
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

# --- HTTPS (docs/configuration.md): on unless DEBUG, each variable may turn one off ----------
# TLS ends at a proxy, which says so in this header ("Name: value"; "off" when Drip is not
# behind one). The proxy must set or strip it: a client that could send it would pass for https.
_proxy_header = (os.environ.get("DRIP_PROXY_SSL_HEADER") or ("off" if DEBUG else "X-Forwarded-Proto: https")).strip()
if _proxy_header.lower() in ("off", "none", "0"):
    SECURE_PROXY_SSL_HEADER = None
else:
    _name, _, _value = _proxy_header.partition(":")
    if not _name.strip() or not _value.strip():
        raise ImproperlyConfigured(f"DRIP_PROXY_SSL_HEADER must be 'Header-Name: value' or off, not {_proxy_header!r}")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# A load balancer's health probe may speak plain http inside the network; /healthz holds no secret.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = int(env_float("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)  # subdomains of Drip's own host
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# Origins allowed to POST the console's forms besides the host itself, e.g. https://drip.example.org
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SILENCED_SYSTEM_CHECKS = [
    # HSTS preload: a commitment for the whole registered domain (hstspreload.org), not this
    # service's to make; SECURE_HSTS_PRELOAD=1 once the domain's owner has decided.
    "security.W021",
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "anymail",
    "axes",
    "drip",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "drip.doors.middleware.SafeCommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login after the others have run.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "drip.urls"
WSGI_APPLICATION = "drip.wsgi.application"

# Django templates serve the admin; message templates are Jinja2 and have their own
# sandboxed environment (drip/delivery/rendering.py), so they are not listed here.
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # web, worker and beat share one file in development: wait for locks instead of failing,
    # and give the test database a file so the worker thread in tests sees the same data.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
    # Take the write lock when a transaction starts, so concurrent writers wait (timeout)
    # instead of failing with "database is locked" when a read turns into a write.
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".run" / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS: list[dict] = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in ("UserAttributeSimilarityValidator", "MinimumLengthValidator", "CommonPasswordValidator",
                 "NumericPasswordValidator")
]
# django-axes first: a locked-out username is refused before its password is even checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
# Repeated failed logins lock the account out for an hour (docs/security.md).
# By username only: behind a proxy every client has the proxy's address, and an attacker
# rotating addresses must still not get more guesses at one account.
AXES_FAILURE_LIMIT = 10
AXES_COOLOFF_TIME = 1  # hours
AXES_LOCKOUT_PARAMETERS = ["username"]
# axes.W006 asks for the client address too: behind a proxy that address is the proxy's, and
# one attacker's failures would lock every operator out.
SILENCED_SYSTEM_CHECKS.append("axes.W006")
AXES_RESET_ON_SUCCESS = True
# The lockouts are on the console's own site, for superusers (drip/admin/__init__.py).
AXES_ENABLE_ADMIN = False
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# Django's English date formats with the zone added to every date-time (drip/formats/en).
FORMAT_MODULE_PATH = ["drip.formats"]
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Redis / Celery -------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
# The broker is a choice (redis:// or amqp:// for RabbitMQ quorum queues); the rate limiter
# stays on Redis either way.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
DRIP_RATE_LIMIT_REDIS_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# An unacknowledged task comes back after this long; the durable timer keeps every ETA far
# below it (DRIP_ENQUEUE_HORIZON), so no task is ever delivered twice just for waiting.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A threads worker (the sender) keeps ETA tasks in a timer thread that sleeps up to this long
# without noticing a task that arrives meanwhile with an earlier ETA (celery.utils.timer2):
# at Celery's default of 1 s, a reminder could leave up to a second late. A wake-up every
# 50 ms costs nothing measurable.
CELERY_WORKER_TIMER_PRECISION = 0.05
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat writes each entry's last_run_at after every task it sends (not every 3 min), so
# /healthz can tell from the database that beat dispatched in the last minute.
CELERY_BEAT_SYNC_EVERY = 1
# Celery's Django fixup otherwise closes the database connection around every task: two
# new PostgreSQL connections per message, the largest single cost of a send. A connection
# broken by a database restart is dropped before the next task (drip/tasks.py).
CELERY_DB_REUSE_MAX = int(env_float("DRIP_WORKER_DB_REUSE_MAX", 1000, minimum=0)) or None

# --- Drip engine ----------------------------------------------------------------------
DRIP_TIME_SCALE = env_float("DRIP_TIME_SCALE", 1.0)
if DRIP_TIME_SCALE <= 0:
    raise ImproperlyConfigured("DRIP_TIME_SCALE must be greater than 0.")
# Steps due within this many (real) seconds are handed to Celery with an ETA; later ones wait
# in the database until the dispatcher brings them into the horizon.
DRIP_ENQUEUE_HORIZON = env_float("DRIP_ENQUEUE_HORIZON", 300.0, minimum=1)
# Whole seconds: django-celery-beat stores intervals as integers.
DRIP_DISPATCH_INTERVAL = env_float("DRIP_DISPATCH_INTERVAL", 5.0, minimum=1)
DRIP_RECONCILE_INTERVAL = env_float("DRIP_RECONCILE_INTERVAL", 30.0, minimum=1)
# A step or message left behind longer than this (real seconds) is taken as a lost enqueue.
DRIP_RECONCILE_GRACE = env_float("DRIP_RECONCILE_GRACE", 120.0, minimum=0.1)
# Seconds a provider call (and a lookup) may take before the client gives up on it.
DRIP_PROVIDER_TIMEOUT = env_float("DRIP_PROVIDER_TIMEOUT", 30.0, minimum=0.1)
# A message whose provider call began this long ago without an outcome (its worker died in
# the call) is looked up at the provider (drip/delivery/verify.py). Longer than the provider
# timeout: a live worker has given up on its call well before.
DRIP_SENDING_TIMEOUT = env_float("DRIP_SENDING_TIMEOUT", 120.0, minimum=1)
if DRIP_SENDING_TIMEOUT <= DRIP_PROVIDER_TIMEOUT:
    raise ImproperlyConfigured("DRIP_SENDING_TIMEOUT must be longer than DRIP_PROVIDER_TIMEOUT.")
# Verifying a send whose outcome is unknown (a read timeout, a worker lost in the call):
# the first lookup after DRIP_VERIFY_DELAY seconds; "not found" is believed only once
# DRIP_VERIFY_NOT_FOUND_AFTER seconds have passed since the call (a provider's search index
# lags behind its send API), and then the message is sent again. A lookup that fails
# (network) is tried again, DRIP_VERIFY_MAX_ATTEMPTS times in all. Real seconds, never scaled.
DRIP_VERIFY_DELAY = env_float("DRIP_VERIFY_DELAY", 5.0, minimum=0)
DRIP_VERIFY_NOT_FOUND_AFTER = env_float("DRIP_VERIFY_NOT_FOUND_AFTER", 45.0, minimum=0)
DRIP_VERIFY_MAX_ATTEMPTS = int(env_float("DRIP_VERIFY_MAX_ATTEMPTS", 8, minimum=1))
# Fast failover (drip/timer/workers.py, drip/timer/failover.py): every worker process writes a heartbeat
# to the database every DRIP_WORKER_HEARTBEAT seconds and records which steps and messages it
# holds; beat runs the failover every DRIP_FAILOVER_INTERVAL (whole) seconds, and a worker
# silent for DRIP_WORKER_DEAD_AFTER seconds has its held work re-armed for the others at once,
# instead of after the visibility timeout (Redis, 1 h) or DRIP_RECONCILE_GRACE.
DRIP_WORKER_HEARTBEAT = env_float("DRIP_WORKER_HEARTBEAT", 2.0, minimum=0.1)
DRIP_WORKER_DEAD_AFTER = env_float("DRIP_WORKER_DEAD_AFTER", 6.0, minimum=0.3)
DRIP_FAILOVER_INTERVAL = env_float("DRIP_FAILOVER_INTERVAL", 2.0, minimum=1)
if DRIP_WORKER_DEAD_AFTER < 2 * DRIP_WORKER_HEARTBEAT:
    # One late heartbeat (a busy host, a slow commit) must not pass for a death.
    raise ImproperlyConfigured("DRIP_WORKER_DEAD_AFTER must be at least twice DRIP_WORKER_HEARTBEAT.")
# Work is handed to tasks in batches: the step task runs up to DRIP_STEP_BATCH steps due at
# the same instant, the send task up to DRIP_SEND_BATCH messages (one claim, one load, one
# consent read for all of them). A send batch that runs longer than DRIP_SEND_BATCH_SECONDS
# (a slow provider) hands its unsent rest back as new, smaller tasks: no claim is held for
# long, and idle workers (a sender's threads) share the work.
DRIP_STEP_BATCH = int(env_float("DRIP_STEP_BATCH", 200, minimum=1))
# A step task runs this many real seconds before its steps are due: it checks them, creates
# their messages and hands them to the sender with the due time as their ETA, so at the due
# instant only the send remains (the sender checks everything again right before the
# provider call). 0 runs steps at their due time.
DRIP_STEP_LEAD = env_float("DRIP_STEP_LEAD", 10.0, minimum=0)
# 200: one Postmark request carries a whole batch, so a round trip is paid once per 200
# (bench/README.md).
DRIP_SEND_BATCH = int(env_float("DRIP_SEND_BATCH", 200, minimum=1))
DRIP_SEND_BATCH_SECONDS = env_float("DRIP_SEND_BATCH_SECONDS", 2.0, minimum=0.1)
# Most emails in one provider request where the backend has a batch endpoint (Postmark's
# /email/batch takes up to 500); a send task's batch (DRIP_SEND_BATCH) bounds it as well.
DRIP_EMAIL_BATCH_MAX = int(env_float("DRIP_EMAIL_BATCH_MAX", 500, minimum=1))
if DRIP_EMAIL_BATCH_MAX > 500:
    raise ImproperlyConfigured("DRIP_EMAIL_BATCH_MAX must be at most 500 (Postmark's limit per batch).")
# Twilio takes one message per request: a send task of a prefork process (`worker`,
# `sender_email`) makes up to this many SMS requests side by side (threads of its own), so a
# process waits for one round trip per group instead of one per message. 1 sends them one
# after the other. (A threads-pool process, `sender_sms`, sends one per thread: its threads
# already run side by side.) 4 requests of ~150 ms keep a process at ~25 SMS/s, more than a
# Twilio sender number takes (1-3/s; short codes 100/s, spread over every process); more
# threads per process only fight over the GIL (bench/README.md).
DRIP_SMS_PARALLEL = int(env_float("DRIP_SMS_PARALLEL", 4, minimum=1))
# The same for an ESP whose API takes one email per request (every anymail backend but
# Postmark's, whose batch endpoint takes a whole send batch in one request).
DRIP_EMAIL_PARALLEL = int(env_float("DRIP_EMAIL_PARALLEL", 8, minimum=1))
DRIP_SEND_MAX_ATTEMPTS = int(env_float("DRIP_SEND_MAX_ATTEMPTS", 5, minimum=1))
DRIP_RETRY_BASE_DELAY = env_float("DRIP_RETRY_BASE_DELAY", 10.0, minimum=0)
DRIP_RETRY_MAX_DELAY = env_float("DRIP_RETRY_MAX_DELAY", 600.0, minimum=0)
# Messages per second per channel, shared by every worker through Redis; 0 = unlimited.
DRIP_RATE_LIMITS = {
    "email": env_float("DRIP_RATE_LIMIT_EMAIL", 0.0, minimum=0),
    "sms": env_float("DRIP_RATE_LIMIT_SMS", 0.0, minimum=0),
}
# A send whose slot is at most this far away waits for it in the task; a later one goes
# back to the queue with a countdown instead of holding a worker.
DRIP_RATE_LIMIT_MAX_SLEEP = env_float("DRIP_RATE_LIMIT_MAX_SLEEP", 1.0, minimum=0)
DRIP_RATE_LIMIT_PREFIX = os.environ.get("DRIP_RATE_LIMIT_PREFIX") or "drip:ratelimit"
# Marketing steps only (the funnel table's purpose column): no marketing SMS inside this
# local window of the contact's zone, and at most N marketing messages per contact and
# channel in a rolling window.
DRIP_SMS_QUIET_HOURS = parse_quiet_hours(os.environ.get("DRIP_SMS_QUIET_HOURS") or "21:00-08:00")
DRIP_FREQUENCY_CAP = parse_frequency_cap(os.environ.get("DRIP_FREQUENCY_CAP") or "off")
DRIP_API_TOKEN = os.environ.get("DRIP_API_TOKEN") or ""
# Bearer token of GET /metrics; unset, /metrics answers only loopback clients, and only
# under DEBUG: behind a proxy every client is loopback (drip/ops/health.py).
DRIP_METRICS_TOKEN = os.environ.get("DRIP_METRICS_TOKEN") or ""
# /healthz answers from checks at most this old (seconds): a flood of it cannot load the
# database and the broker.
DRIP_HEALTH_CACHE_SECONDS = 2.0
# The console: a CSV import of more rows, or a completion of an event with more active
# registrations, runs as a Celery task with a progress page instead of inside the request.
DRIP_IMPORT_INLINE_ROWS = int(env_float("DRIP_IMPORT_INLINE_ROWS", 500, minimum=0))
DRIP_COMPLETE_INLINE_REGISTRATIONS = int(env_float("DRIP_COMPLETE_INLINE_REGISTRATIONS", 2000, minimum=0))
# A reschedule that moves the start by more than this many minutes emails every active
# registrant a "new time" notice (transactional; consent and unsubscribe apply as usual).
DRIP_RESCHEDULE_NOTICE_MINUTES = env_float("DRIP_RESCHEDULE_NOTICE_MINUTES", 15.0, minimum=0)
PUBLIC_BASE_URL = (os.environ.get("PUBLIC_BASE_URL") or "http://127.0.0.1:8000").rstrip("/")
MESSAGE_TEMPLATES_DIR = BASE_DIR / "templates" / "messages"

# --- Email ----------------------------------------------------------------------------
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL") or "events@example.com"
ANYMAIL = {
    name[len("ANYMAIL_"):]: value for name, value in os.environ.items() if name.startswith("ANYMAIL_") and value
}
# The sender's postal address, in every email's footer (CAN-SPAM); a system check warns
# when DEBUG is off and it is unset (drip/doors/inbound/checks.py).
DRIP_SENDER_ADDRESS = (os.environ.get("DRIP_SENDER_ADDRESS") or "").strip() or (
    "Drip development, 1 Example Street, Springfield" if DEBUG else ""
)

# --- SMS ------------------------------------------------------------------------------
SMS_BACKEND = os.environ.get("SMS_BACKEND") or "console"
TWILIO_ACCOUNT_SID = os.environ.get("TWILIO_ACCOUNT_SID") or ""
TWILIO_AUTH_TOKEN = os.environ.get("TWILIO_AUTH_TOKEN") or ""
TWILIO_FROM_NUMBER = os.environ.get("TWILIO_FROM_NUMBER") or ""
TWILIO_MESSAGING_SERVICE_SID = os.environ.get("TWILIO_MESSAGING_SERVICE_SID") or ""
TWILIO_API_BASE_URL = (os.environ.get("TWILIO_API_BASE_URL") or "https://api.twilio.com").rstrip("/")
# The reply to an inbound HELP / INFO (drip/doors/inbound/twilio_webhooks.py).
DRIP_SMS_HELP_TEXT = os.environ.get("DRIP_SMS_HELP_TEXT") or (
    f"Event reminders from {DEFAULT_FROM_EMAIL.split('@')[-1]}. Help: {DEFAULT_FROM_EMAIL}. "
    "Msg&data rates may apply. Reply STOP to opt out."
)
# How long Twilio may hold an SMS in its queue before dropping it (Twilio accepts
# 1..36000 s): a reminder stuck for hours ("starts in 1 hour") must not arrive at all.
DRIP_SMS_VALIDITY_SECONDS = int(env_float("DRIP_SMS_VALIDITY_SECONDS", 1800, minimum=1))
if DRIP_SMS_VALIDITY_SECONDS > 36000:
    raise ImproperlyConfigured("DRIP_SMS_VALIDITY_SECONDS must be at most 36000 (Twilio's limit).")
if SMS_BACKEND not in ("console", "twilio"):
    raise ImproperlyConfigured(f"SMS_BACKEND must be 'console' or 'twilio', not {SMS_BACKEND!r}.")
if SMS_BACKEND == "twilio":
    missing = [n for n in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN") if not globals()[n]]
    if not (TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID):
        missing.append("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
    if missing:
        raise ImproperlyConfigured("SMS_BACKEND=twilio needs " + ", ".join(missing) + " to be set.")

# --- Logging: one line per step/message event, each carrying registration/step/message ids.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # An unsubscribe link's token never reaches a log (drip/support/logs.py, drip/doors/access_log.py).
    "filters": {"redact_tokens": {"()": "drip.support.logs.RedactTokens"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_tokens"]}},
    "loggers": {
        # "Bad Request: /u/<token>/": Django names the path of every 4xx and 5xx.
        "django.request": {"filters": ["redact_tokens"]},
        "drip": {"handlers": ["console"], "level": os.environ.get("DRIP_LOG_LEVEL", "INFO"), "propagate": False},
        "campaigns": {"handlers": ["console"], "level": os.environ.get("DRIP_LOG_LEVEL", "INFO"), "propagate": False},
        # The timer tasks run every few seconds; a line per run would bury the ones that matter.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
        # The twilio client logs every request's method, URL and headers at INFO (a dozen
        # lines per SMS); the sender's own line says what was sent and the provider's id.
        "twilio.http_client": {"level": "WARNING"},
    },
}
