#!/usr/bin/env bash
# make bench: the benchmark on the real stack (bench/README.md). Its own throwaway Redis, always;
# PostgreSQL at DATABASE_URL when set (it must be empty), else a drip_bench database it creates
# on the local server and drops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

# Never the shared Redis: the benchmark flushes its broker between phases.
unset REDIS_URL
source scripts/redis_up.sh
redis_up throwaway
export BENCH_REDIS_OWNED=1

BENCH_PG_ADMIN_URL="${BENCH_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# Another name when two checkouts run it on one server at once.
BENCH_DB_NAME="${BENCH_DB_NAME:-drip_bench}"
source scripts/pg_admin.sh

cleanup() {
    local status=$?
    if [ -n "${BENCH_CREATED_DB:-}" ]; then
        pg_admin "$BENCH_PG_ADMIN_URL" drop "$BENCH_DB_NAME" || echo "bench: could not drop database $BENCH_DB_NAME" >&2
    fi
    if [ -n "${DRIP_STARTED_REDIS_PIDFILE:-}" ]; then
        kill "$(cat "$DRIP_STARTED_REDIS_PIDFILE" 2>/dev/null)" 2>/dev/null || true
    fi
    exit "$status"
}
# Replaces redis_up's own EXIT trap, so it stops that Redis too.
trap cleanup EXIT

if [ -z "${DATABASE_URL:-}" ]; then
    pg_admin "$BENCH_PG_ADMIN_URL" create "$BENCH_DB_NAME"
    BENCH_CREATED_DB=1
    export DATABASE_URL="${BENCH_PG_ADMIN_URL%/*}/$BENCH_DB_NAME"
    export BENCH_DATABASE_OWNED=1
fi
echo "bench: database ${DATABASE_URL}  redis: $REDIS_URL" >&2

started=$(date +%s)
if [ "${1:-}" = "--profile" ]; then
    shift
    .venv/bin/python -m bench.profile "$@"  # where a message's CPU goes (bench/profile.py)
    exit
fi
.venv/bin/python -m bench.run "$@"
echo "make bench took $(( $(date +%s) - started )) s" >&2
