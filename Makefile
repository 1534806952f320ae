# Two commands on a fresh machine: `make run` (embedded SQLite + in-process tasks, demo workspace)
# and `make test` (the whole suite on Postgres + Redis).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/baize_eval
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test worker fake-llm migrate demo bench browser services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

migrate: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py load_demo

run: demo
	@echo "baize-eval on http://$(HOST):$(PORT)/  (Ctrl-C stops it)"
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

worker: $(VENV)/.installed
	$(BIN)/celery -A baize_eval worker -B -Q generation,default --pool threads --concurrency 8 -l info

# A local stand-in for an OpenAI-compatible server on the demo's "local" endpoint (127.0.0.1:8001): try a
# generation run without an API key or a GPU. Its answers are canned self-chat text.
fake-llm: $(VENV)/.installed
	$(BIN)/python tests/fake_openai.py --port 8001 --latency 0.2

# Debian's Chromium drives the browser tests; nothing is downloaded by Playwright itself.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || { echo "Could not install chromium: run 'apt-get install chromium' as root." >&2; exit 1; }; }

services:
	@scripts/ensure-services.sh

test: $(VENV)/.installed-dev browser services
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev services
	@echo "See BENCHMARKS.md for each benchmark's command."

clean:
	rm -rf $(VENV) var staticfiles
