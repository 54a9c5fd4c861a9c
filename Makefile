# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Exact versions of every package `pip install -e '.[test]'` pulls in; `make lock` refreshes it.
LOCK := requirements.lock
# `make run HOST=... PORT=...` override the settings; unset, `ers serve` listens where they say
# (ERS_HOST / ERS_PORT or ers.yaml, else 127.0.0.1:8000).
HOST ?=
PORT ?=

.PHONY: run test bench lint lock venv system-run system-test

# A changed lock reinstalls, so `git pull` followed by `make test` runs the locked versions.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint $(LOCK) -e '.[test]'
	touch $(STAMP)

# Resolve pyproject's ranges afresh in a throwaway venv and pin what was installed.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet -e '.[test]'; \
	{ printf '%s\n' \
	    "# Exact versions for pyproject.toml's dependencies and the test extra, resolved on" \
	    "# Linux with CPython 3.11. Used by make (venv), the Dockerfile and CI as a pip" \
	    "# constraints file. Refresh with: make lock"; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable; } > $(LOCK)
	@echo "wrote $(LOCK)"

venv: $(STAMP)

system-run:
	@scripts/ensure-system-packages restic

system-test:
	@scripts/ensure-system-packages restic prometheus alertmanager postgresql nginx

run: $(STAMP) system-run
	$(VENV)/bin/ers serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(STAMP) system-test
	$(PY) -m pytest -q

bench: $(STAMP) system-test
	$(PY) -m bench --readme

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
