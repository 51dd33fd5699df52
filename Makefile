# The two commands: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 5000

.PHONY: demo serve test install install-dev db clean translations compile-translations

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

# The web pages' languages: catalogues in trial/translations/<lang>/LC_MESSAGES/messages.po (kept
# in git); the compiled .mo files are built from them here, at install time (not kept in git).
LANGS := de it nb pt_BR ko he
PO := $(foreach l,$(LANGS),trial/translations/$(l)/LC_MESSAGES/messages.po)
MO := $(PO:.po=.mo)

trial/translations/%/LC_MESSAGES/messages.mo: trial/translations/%/LC_MESSAGES/messages.po | $(VENV)/.installed
	$(BIN)/pybabel compile --statistics -l $* -i $< -o $@

compile-translations: $(MO)

# After changing a marked string: extract every message (templates, forms, views, trial/catalogue.py's
# N_), merge them into each catalogue, translate the new ones (no msgstr may stay empty or fuzzy:
# tests/test_i18n.py checks), then compile
# the calls whose first argument is a message: lazy texts of the forms, composed messages
# (trial.catalogue.Msg) and the leads of the services' refusals (trial.validation.refuse)
BABEL_KEYWORDS := -k _l -k lazy_gettext -k Msg -k refuse -k refusal -k _refuse

translations: $(VENV)/.installed
	$(BIN)/pybabel extract -F babel.cfg $(BABEL_KEYWORDS) --no-location --sort-output \
	  -o trial/translations/messages.pot .
	$(BIN)/pybabel update -i trial/translations/messages.pot -d trial/translations --no-fuzzy-matching --ignore-obsolete
	$(MAKE) compile-translations

install: $(VENV)/.installed $(MO)
install-dev: $(VENV)/.installed-dev node_modules/.package-lock.json $(MO)

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
	$(BIN)/python -m pytest -n $(WORKERS) --dist worksteal $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache build *.egg-info
