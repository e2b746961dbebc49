# Everything set-up is here: `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := libvirt-dev pkg-config qemu-guest-agent libvirt-daemon libvirt-clients prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMPS := .stamps

.PHONY: run test bench setup postgres clean

run: setup
	$(BIN)/guestinfo run --demo

test: setup postgres
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy schemas plumbing collectors streams sinks guestinfo
	$(BIN)/pytest -ra

# The benchmark (full size, a few minutes): prints one table; see README "Performance".
bench: setup
	$(BIN)/guestinfo bench

setup: $(STAMPS)/deb $(STAMPS)/venv

$(STAMPS)/deb: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/deb
	@mkdir -p $(STAMPS)
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# The PostgreSQL tests need the server on 127.0.0.1:5432 (database `test`); start it if it is down.
postgres:
	@if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then exit 0; fi; \
	if command -v pg_ctlcluster >/dev/null; then \
	  echo "starting PostgreSQL"; $(SUDO) pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start; \
	fi; \
	for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	echo "PostgreSQL is not answering on 127.0.0.1:5432: the store tests need it" >&2; exit 1

clean:
	rm -rf $(VENV) $(STAMPS) build *.egg-info
