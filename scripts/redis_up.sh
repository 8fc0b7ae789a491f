# Sourced by run.sh / test.sh / bench.sh. Makes REDIS_URL answer:
#   - if something already answers at REDIS_URL, use it;
#   - else, if redis-server is installed, start a throwaway one (no persistence) and stop it on exit.
# $1 = "keep-default-port" to start the local server on the port of REDIS_URL (make run),
#      otherwise a free port is chosen (make test, so parallel runs never collide).
redis_answers() {
    .venv/bin/python - "$1" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

redis_up() {
    local mode="$1"
    if [ -n "${REDIS_URL:-}" ] && redis_answers "$REDIS_URL"; then
        return 0
    fi
    if [ "$mode" = "keep-default-port" ] && [ -z "${REDIS_URL:-}" ] && redis_answers "redis://127.0.0.1:6379/0"; then
        export REDIS_URL="redis://127.0.0.1:6379/0"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "Drip needs Redis: nothing answers at ${REDIS_URL:-redis://127.0.0.1:6379/0} and redis-server is not installed; install it with 'sudo apt-get install redis-server' (or set REDIS_URL)." >&2
        exit 1
    fi
    local port
    if [ "$mode" = "keep-default-port" ]; then
        port=6379
    else
        port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    fi
    mkdir -p .run
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --pidfile "$PWD/.run/redis-$port.pid" --logfile "$PWD/.run/redis-$port.log" --dir "$PWD/.run" >/dev/null
    for _ in $(seq 50); do
        redis_answers "redis://127.0.0.1:$port/0" && break
        sleep 0.1
    done
    export REDIS_URL="redis://127.0.0.1:$port/0"
    DRIP_STARTED_REDIS_PIDFILE="$PWD/.run/redis-$port.pid"
    trap 'kill "$(cat "$DRIP_STARTED_REDIS_PIDFILE" 2>/dev/null)" 2>/dev/null || true' EXIT
    echo "started a throwaway redis-server at $REDIS_URL" >&2
}
