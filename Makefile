# Every target here is a command documented in README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8001

.PHONY: run test test-fast test-django bench bench-quick profile lint format docs clean

$(BIN)/.installed: requirements.txt requirements-dev.txt scripts/sysdeps.sh
	scripts/sysdeps.sh build
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

## make run: set up, migrate the demo database, serve it on http://127.0.0.1:$(PORT)
run: $(BIN)/.installed
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG:-1} $(BIN)/python server.py --port=$(PORT)

## make test: set up, then the whole suite (our tests, then Django's own on djpool)
test: $(BIN)/.installed
	scripts/sysdeps.sh test
	$(BIN)/python -m pytest
	$(MAKE) test-django

## make test-fast: our suite only
test-fast: $(BIN)/.installed
	scripts/sysdeps.sh test
	$(BIN)/python -m pytest

## make test-django: Django's own database tests with ENGINE=djpool.backends.mysql
test-django: $(BIN)/.installed
	scripts/sysdeps.sh test
	$(BIN)/python scripts/django_suite.py

$(BIN)/.bench-installed: $(BIN)/.installed requirements-bench.txt
	$(BIN)/python -m pip install -q -r requirements-bench.txt
	touch $@

## make bench: wrk → nginx → 2 workers → MariaDB, this server vs gunicorn vs Django's default
bench: $(BIN)/.bench-installed
	scripts/sysdeps.sh test
	$(BIN)/python bench/run.py

## make bench-quick: one short round of the same (under a minute)
bench-quick: $(BIN)/.bench-installed
	scripts/sysdeps.sh test
	$(BIN)/python bench/run.py --quick

## make profile: one worker's CPU per request by thread, against Django called in-process, and a flame graph
profile: $(BIN)/.bench-installed
	scripts/sysdeps.sh test
	$(BIN)/python bench/profile.py --py-spy

## make lint: ruff and mypy, as CI runs them
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff format .

## make docs: regenerate the generated parts of docs/
docs: $(BIN)/.installed
	$(BIN)/python -m appserver.config > docs/server-options.md.tmp && mv docs/server-options.md.tmp docs/server-options.md
	$(BIN)/python -m deploy docs

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
