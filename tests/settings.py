"""Test settings: the project's own, with DEBUG defaulted so pytest runs without any env."""
import os
import secrets

os.environ.setdefault("DEBUG", "1")
# drip/settings.py has no fallback key: a random one per run, which every process the suite
# starts inherits (a worker's unsubscribe link verifies in the test's process).
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
# Never a developer's .env (the settings `make run` writes): the suite sees only its own environment.
os.environ["DRIP_DOTENV"] = "0"
# The suite must not depend on the hour it runs at: with the production default (21:00-08:00
# in the contact's zone), a marketing SMS of a test run at night waited for the morning. The
# quiet-hours tests set their own window (tests/test_pacing.py, tests/test_simulate.py).
os.environ.setdefault("DRIP_SMS_QUIET_HOURS", "off")

from drip.settings import *  # noqa: E402,F401,F403
from drip.settings import BASE_DIR, REDIS_URL  # noqa: E402  (named: the linter sees them)

# Tests use their own Redis database number, so a run never touches a developer's queues.
TEST_REDIS_DB = int(os.environ.get("DRIP_TEST_REDIS_DB", "15"))
TEST_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}" if REDIS_URL.count("/") >= 3 else REDIS_URL + f"/{TEST_REDIS_DB}"
DRIP_RATE_LIMIT_REDIS_URL = TEST_REDIS_URL
# CELERY_BROKER_URL (e.g. amqp://guest:guest@127.0.0.1:5672/<vhost>, `make test-amqp`) runs the
# suite on that broker; without it, Redis's test database is the broker too.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or TEST_REDIS_URL
if CELERY_BROKER_URL.startswith(("amqp://", "pyamqp://")):
    # A worker's event loop on RabbitMQ wakes at its heartbeat timer; at 2 s a test worker
    # stops in about a second instead of ten.
    CELERY_BROKER_HEARTBEAT = 2

# Worker threads of the tests must not keep connections open past a test: the test
# database is truncated between tests and dropped at the end.
CELERY_DB_REUSE_MAX = None

(BASE_DIR / ".run").mkdir(exist_ok=True)  # the SQLite test database lives there

# Every console test logs a user in: the production hasher's deliberate slowness (~0.3 s a
# password) was a third of `make test-fast`. Only test users' passwords are hashed with it.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
