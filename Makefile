# The two commands are `make run` and `make test`; both do every set-up step themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast test-sqlite test-amqp lint bench bench-profile soak clean

install: $(STAMP)

# Re-install only when requirements.txt changes; the stamp records the last good install.
$(STAMP): requirements.txt
	@test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV) || { \
		echo "Could not create $(VENV): on Debian/Ubuntu install the venv module with 'sudo apt-get install python3-venv'." >&2; \
		rm -rf $(VENV); exit 1; }
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

run: install
	@bash scripts/run.sh

# The whole suite after the linters (a tree that does not pass them is not tested); with
# ARGS (a few tests while working) the linters are left to `make lint`. The database is
# DATABASE_URL's, or else a throwaway PostgreSQL from a pinned wheel (scripts/postgres_up.sh).
test: install
	@if [ -z "$(ARGS)" ]; then $(MAKE) --no-print-directory lint; fi
	@bash scripts/test.sh $(ARGS)

# The unit layer only (pytest.ini; tests/conftest.py assigns the layers), in under a minute.
# The linters are NOT run: `make lint`, or `make test` before a commit.
test-fast: install
	@bash scripts/test.sh -m unit -q $(ARGS)

# On SQLite, make run's embedded default, a smaller suite: the unit layer, then the funnels end
# to end through a real worker (SQLITE_INTEGRATION); PostgreSQL-only tests skip themselves.
# ARGS runs those tests instead. About two minutes; no linters.
SQLITE_INTEGRATION ?= tests/test_pre_event_funnel.py tests/test_post_event_funnel.py tests/test_simulate.py
test-sqlite: install
	@export DATABASE_URL=sqlite:///$(CURDIR)/.run/test-sqlite.sqlite3; \
	if [ -n "$(ARGS)" ]; then bash scripts/test.sh $(ARGS); \
	else bash scripts/test.sh -m unit -q && bash scripts/test.sh -m integration -q $(SQLITE_INTEGRATION); fi

# The durability, broker, beat and failover tests again on RabbitMQ (quorum queues), in a vhost of their
# own that is deleted afterwards; ARGS picks other tests. Needs rabbitmqctl and RabbitMQ at
# AMQP_HOST (guest/guest); the database is DATABASE_URL's, as for make test.
AMQP_HOST ?= 127.0.0.1:5672
AMQP_TESTS ?= tests/test_durability.py tests/test_brokers.py tests/test_beats.py tests/test_failover.py
test-amqp: install
	@vhost=drip_test_$$$$_$$(date +%s); \
	rabbitmqctl -q add_vhost $$vhost >/dev/null && rabbitmqctl -q set_permissions -p $$vhost guest ".*" ".*" ".*" >/dev/null || exit 1; \
	CELERY_BROKER_URL=amqp://guest:guest@$(AMQP_HOST)/$$vhost bash scripts/test.sh $(or $(ARGS),$(AMQP_TESTS)); rc=$$?; \
	rabbitmqctl -q delete_vhost $$vhost >/dev/null; exit $$rc

lint: install
	$(BIN)/ruff check .
	DEBUG=1 $(BIN)/mypy

bench: install
	@bash scripts/bench.sh

# Where a message's CPU goes, stage by stage, under cProfile (bench/profile.py): a minute.
bench-profile: install
	@bash scripts/bench.sh --profile

# The chaos soak (bench/README.md, "Chaos soak"): about 12 minutes per broker. SOAK_BROKER=redis|amqp|both
# (default both), SOAK_REGISTRATIONS (20000), SOAK_SECONDS (480), SOAK_SEED; SOAK_SHORT=1 for
# 2,000 registrations in about 3 minutes, to work on it.
soak: install
	@bash scripts/soak.sh

clean:
	rm -rf $(VENV) .run staticfiles
