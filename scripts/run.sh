#!/usr/bin/env bash
# make run: migrations, demo data on first run, then web + worker + sender + beat + flower under honcho.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis_up.sh
redis_up keep-default-port
export DEBUG="${DEBUG:-1}"
# A development token so the README's curl examples work as pasted; set your own in production.
if [ "$DEBUG" = "1" ]; then export DRIP_API_TOKEN="${DRIP_API_TOKEN:-dev-token}"; fi
export PATH="$PWD/.venv/bin:$PATH"
python manage.py migrate --noinput
python manage.py collectstatic --noinput >/dev/null
python manage.py bootstrap_demo
echo "Drip: web http://127.0.0.1:${PORT:-8000}/admin/ (demo login admin / admin), Flower http://127.0.0.1:5555, API token: ${DRIP_API_TOKEN:-unset}" >&2
# honcho hands each process a PORT counted from its base port (5000 unless told): web first.
export PORT="${PORT:-8000}"
# The demo superuser's password is public: listen on loopback only unless told otherwise.
export WEB_BIND="${WEB_BIND:-127.0.0.1}"
# A few sender threads are plenty for the console backends of a demo (16 in production).
export DRIP_SENDER_THREADS="${DRIP_SENDER_THREADS:-4}"
# Not exec: the EXIT trap must still stop a redis-server this script started.
honcho start --port "$PORT"
