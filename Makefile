# Every target installs what it needs itself, on a fresh Debian 12 machine as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run dev test unit lint bench deb clean system-deps

system-deps:
	@if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		apt-get update && apt-get install -y python3-venv python3-pip; fi

$(STAMP): pyproject.toml | system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m vaultd.dev.stack

dev: $(STAMP)
	$(VENV)/bin/vaultd server --dev

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .vaultd
