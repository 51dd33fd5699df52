# The two commands: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000

.PHONY: demo serve test install install-dev db clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# axe-core, which the browser tests (tests/browser) inject into the pages for the accessibility check
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev node_modules/.package-lock.json

db: install
	$(BIN)/trial db upgrade

DEMO_DB := sqlite:///$(CURDIR)/instance/demo.db

# Create the venv, RESET instance/demo.db (a fresh SQLite database), load the demo, serve on
# http://127.0.0.1:$(PORT) (make demo PORT=5001 for another port)
demo: install
	@echo "Resetting the demo database instance/demo.db (make serve keeps it)"
	rm -f instance/demo.db instance/demo.db-wal instance/demo.db-shm
	TRIAL_DATABASE_URL=$(DEMO_DB) $(BIN)/trial db upgrade
	TRIAL_DATABASE_URL=$(DEMO_DB) $(BIN)/trial demo
	@echo "Serving on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	TRIAL_DATABASE_URL=$(DEMO_DB) $(BIN)/trial serve --port $(PORT)

# Serve the existing demo database as it is (migrated to the newest schema first, never reset)
serve: install
	TRIAL_DATABASE_URL=$(DEMO_DB) $(BIN)/trial db upgrade
	@echo "Serving instance/demo.db on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	TRIAL_DATABASE_URL=$(DEMO_DB) $(BIN)/trial serve --port $(PORT)

# Install the dev extras, check the layers (import-linter) and run the whole suite on every core
# (SQLite; set TRIAL_TEST_DATABASE_URL for PostgreSQL). PYTEST_ARGS adds options, e.g. -k lock.
WORKERS ?= auto
test: install-dev
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache build *.egg-info
