# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test bench lint venv system-run system-test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

system-run:
	@scripts/ensure-system-packages restic

system-test:
	@scripts/ensure-system-packages restic prometheus alertmanager postgresql

run: $(STAMP) system-run
	$(VENV)/bin/ers serve --host $(HOST) --port $(PORT)

test: $(STAMP) system-test
	$(PY) -m pytest -q

bench: $(STAMP) system-test
	$(PY) -m bench --readme

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
