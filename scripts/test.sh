#!/usr/bin/env bash
# make test: PostgreSQL when DATABASE_URL is set, SQLite otherwise; Redis at REDIS_URL or a throwaway one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/redis_up.sh
redis_up throwaway
export DEBUG="${DEBUG:-1}"
# Never a developer's .env (make run's settings): neither pytest nor anything it starts reads it.
export DRIP_DOTENV=0
export PATH="$PWD/.venv/bin:$PATH"
echo "database: ${DATABASE_URL:-sqlite (default)}  redis: $REDIS_URL" >&2
.venv/bin/python -m pytest "$@"
