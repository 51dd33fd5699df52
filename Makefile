# The two commands: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000

.PHONY: demo test install install-dev db serve clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

db: install
	$(BIN)/trial db upgrade

# Create the venv, migrate a fresh SQLite database, load the demo, serve on http://127.0.0.1:5000
demo: install
	rm -f instance/demo.db instance/demo.db-wal instance/demo.db-shm
	TRIAL_DATABASE_URL=sqlite:///$(CURDIR)/instance/demo.db $(BIN)/trial db upgrade
	TRIAL_DATABASE_URL=sqlite:///$(CURDIR)/instance/demo.db $(BIN)/trial demo
	@echo "Serving on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	TRIAL_DATABASE_URL=sqlite:///$(CURDIR)/instance/demo.db $(BIN)/trial serve --port $(PORT)

# Install the dev extras and run the whole suite (SQLite; set TRIAL_TEST_DATABASE_URL for PostgreSQL)
test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache build *.egg-info
