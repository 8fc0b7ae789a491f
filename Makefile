# The two commands are `make run` and `make test`; both do every set-up step themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

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
# ARGS (a few tests while working) the linters are left to `make lint`.
test: install
	@if [ -z "$(ARGS)" ]; then $(MAKE) --no-print-directory lint; fi
	@bash scripts/test.sh $(ARGS)

lint: install
	$(BIN)/ruff check .
	DEBUG=1 $(BIN)/mypy

bench: install
	@bash scripts/bench.sh

clean:
	rm -rf $(VENV) .run staticfiles
