#!/usr/bin/env bash
# make test and its layers: the database at DATABASE_URL, or a throwaway PostgreSQL when it is unset
# (scripts/postgres_up.sh); Redis at REDIS_URL, or a throwaway one (scripts/redis_up.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis_up.sh
redis_up throwaway
source scripts/postgres_up.sh
postgres_up
export DEBUG="${DEBUG:-1}"
# Never a developer's .env (make run's settings): neither pytest nor anything it starts reads it.
export DRIP_DOTENV=0
export PATH="$PWD/.venv/bin:$PATH"
echo "database: $DATABASE_URL  redis: $REDIS_URL" >&2
.venv/bin/python -m pytest "$@"
