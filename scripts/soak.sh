#!/usr/bin/env bash
# make soak: the chaos soak (bench/README.md, "Chaos soak"). For each broker of SOAK_BROKER
# (redis | amqp | both, default both): a database of its own (drip_soak_<broker>) on the local
# PostgreSQL, created and dropped; a throwaway Redis (the broker, or only the rate limiter on
# RabbitMQ); for amqp a vhost of its own on RABBITMQ (127.0.0.1:5672, guest/guest) created and
# deleted with rabbitmqctl. Every process the soak starts lives in a process group of its own
# and is stopped however this script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
SOAK_BROKER="${SOAK_BROKER:-both}"
SOAK_PG_ADMIN_URL="${SOAK_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1:5672}"
export SOAK_PG_ADMIN_URL
if [ "${SOAK_SHORT:-0}" = 1 ]; then
    # For working on the soak: a tenth of the registrations, a quarter of the time.
    export SOAK_REGISTRATIONS="${SOAK_REGISTRATIONS:-2000}" SOAK_SECONDS="${SOAK_SECONDS:-120}" SOAK_SETTLE_MAX="${SOAK_SETTLE_MAX:-120}"
fi

# Never the shared Redis: the soak flushes it.
unset REDIS_URL CELERY_BROKER_URL DATABASE_URL
source scripts/redis_up.sh

source scripts/pg_admin.sh

SOAK_PID=""
CREATED_DBS=()
CREATED_VHOSTS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    # The driver stops its own process groups on the way out; SIGTERM lets it do so.
    if [ -n "$SOAK_PID" ] && kill -0 "$SOAK_PID" 2>/dev/null; then
        kill -TERM "$SOAK_PID" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$SOAK_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$SOAK_PID" 2>/dev/null || true
    fi
    # Had the driver died without stopping them: the process groups it started (each still
    # ours only while its leader runs in this checkout).
    for pid in $(cat bench/logs/soak/*/pids 2>/dev/null); do
        if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PWD" ]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    done
    for db in "${CREATED_DBS[@]}"; do pg_admin "$SOAK_PG_ADMIN_URL" drop "$db" || echo "soak: could not drop database $db" >&2; done
    for vhost in "${CREATED_VHOSTS[@]}"; do rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true; done
    if [ -n "${DRIP_STARTED_REDIS_PIDFILE:-}" ]; then
        kill "$(cat "$DRIP_STARTED_REDIS_PIDFILE" 2>/dev/null)" 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

redis_up throwaway
# redis_up set its own traps; ours stop that Redis too.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

run_one() {
    local broker="$1" db="drip_soak_$1"
    pg_admin "$SOAK_PG_ADMIN_URL" create "$db"
    CREATED_DBS+=("$db")
    export DATABASE_URL="${SOAK_PG_ADMIN_URL%/*}/$db" SOAK_DB_NAME="$db" SOAK_BROKER_NAME="$broker"
    if [ "$broker" = amqp ]; then
        local vhost="drip_soak_$$_$(date +%s)"
        rabbitmqctl -q add_vhost "$vhost" >/dev/null
        CREATED_VHOSTS+=("$vhost")
        rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
        export CELERY_BROKER_URL="amqp://guest:guest@$AMQP_HOST/$vhost" SOAK_AMQP_VHOST="$vhost"
    else
        export CELERY_BROKER_URL="$REDIS_URL"
    fi
    .venv/bin/python -c 'import redis, os; redis.Redis.from_url(os.environ["REDIS_URL"]).flushall()'
    echo "soak[$broker]: database $DATABASE_URL  broker $CELERY_BROKER_URL  redis $REDIS_URL" >&2
    # In the background and waited for, so a signal reaches the trap at once.
    set +e
    setsid .venv/bin/python -m bench.soak &
    SOAK_PID=$!
    wait "$SOAK_PID"
    local rc=$?
    set -e
    SOAK_PID=""
    return "$rc"
}

status=0
case "$SOAK_BROKER" in
    redis|amqp) run_one "$SOAK_BROKER" || status=$? ;;
    both) run_one redis || status=$?; run_one amqp || status=$? ;;
    *) echo "SOAK_BROKER must be redis, amqp or both, not $SOAK_BROKER" >&2; exit 2 ;;
esac
exit "$status"
