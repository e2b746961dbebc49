# Everything set-up is here: `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PACKAGES := libvirt-dev pkg-config qemu-guest-agent
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMPS := .stamps

.PHONY: run test setup lint unit integration clean

run: setup
	$(BIN)/guestinfo run --demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy schemas collectors streams sinks guestinfo
	$(BIN)/pytest -ra

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

clean:
	rm -rf $(VENV) $(STAMPS) build *.egg-info
