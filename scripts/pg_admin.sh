# Sourced by bench.sh and soak.sh (after make install): a database of their own, made and
# dropped on a PostgreSQL server they may share with others.
# pg_admin ADMIN_URL create|drop NAME: drop NAME (its connections too), then create it again
# for "create".
pg_admin() {
    .venv/bin/python - "$1" "$2" "$3" <<'PY'
import sys, psycopg
url, action, name = sys.argv[1:]
with psycopg.connect(url, autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if action == "create":
        conn.execute(f'CREATE DATABASE "{name}"')
PY
}
