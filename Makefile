# Everything set-up is here: `make run` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian's packages of the tools the tests run: libvirtd, qemu-ga, promtool, PostgreSQL (the tests start
# throwaway servers of their own with its initdb and pg_ctl, and use none the package may have started).
DEB_PACKAGES := libvirt-dev pkg-config qemu-guest-agent libvirt-daemon libvirt-clients prometheus postgresql
# kubectl and kustomize, built from their Go modules at the versions setup/kubernetes/go.mod pins.
TOOLS := .tools/bin
# Apache Kafka's server jars and their dependencies, from Maven Central (setup/kafka/pom.xml pins the release).
KAFKA_LIBS := .tools/kafka/libs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMPS := .stamps

.PHONY: run test bench setup check-machine clean

run: setup
	$(BIN)/guestinfo run --demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy schemas plumbing collectors streams sinks guestinfo
	$(BIN)/pytest -ra

# The benchmark (full size, about 17 minutes): one table, both Kafka engines; see docs/performance.md.
bench: setup
	$(BIN)/guestinfo bench

setup: $(STAMPS)/deb $(STAMPS)/venv $(STAMPS)/kubernetes-tools $(STAMPS)/kafka

# Debian, Python 3.11, Go, Java 17 and Maven: named, and the set-up stopped, when one is missing.
check-machine:
	@setup/check-machine.sh $(PYTHON)

$(STAMPS)/deb: Makefile | check-machine
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMPS)/venv: pyproject.toml $(STAMPS)/deb | check-machine
	@mkdir -p $(STAMPS)
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# The first build on a new machine takes a few minutes (Go fetches the modules); later ones reuse Go's caches.
$(STAMPS)/kubernetes-tools: setup/kubernetes/go.mod setup/kubernetes/go.sum setup/kubernetes/build.sh | check-machine
	@mkdir -p $(STAMPS)
	@echo "building kubectl and kustomize into $(TOOLS) (setup/kubernetes/go.mod)"
	setup/kubernetes/build.sh $(TOOLS)
	@touch $@

# About 45 jars, 43 MB; a minute on a new machine, seconds once Maven's local repository has them.
$(STAMPS)/kafka: setup/kafka/pom.xml | check-machine
	@mkdir -p $(STAMPS)
	@echo "fetching Apache Kafka into $(KAFKA_LIBS) (setup/kafka/pom.xml)"
	rm -rf $(KAFKA_LIBS)
	mvn -q -B --no-transfer-progress -Dstyle.color=never -f setup/kafka/pom.xml dependency:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS)
	@touch $@

clean:
	rm -rf $(VENV) $(STAMPS) .tools build *.egg-info
