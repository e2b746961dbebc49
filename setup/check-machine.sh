#!/usr/bin/env bash
# What the set-up needs from the machine before it installs anything else; stops at the first thing
# missing, with a message that names it. Usage: setup/check-machine.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
need() { echo "make setup: $1" >&2; exit 1; }

# Debian (apt and dpkg install the system packages: libvirt, qemu-guest-agent, PostgreSQL, promtool).
[ -f /etc/debian_version ] && command -v apt-get >/dev/null && command -v dpkg >/dev/null \
  || need "this set-up runs on Debian (12 or later): /etc/debian_version, apt-get and dpkg are needed"

# Python 3.11 or later, with venv.
command -v "$python" >/dev/null || need "Python 3.11 or later is needed: '$python' is not on the PATH (PYTHON=... names another)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || need "Python 3.11 or later is needed: '$python' is $("$python" -c 'import platform; print(platform.python_version())')"

# Go, at least the version the pinned Kubernetes modules ask for (kubectl and kustomize are built with it).
wanted_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' setup/kubernetes/go.mod)
command -v go >/dev/null || need "Go $wanted_go or later is needed to build kubectl and kustomize: 'go' is not on the PATH"
have_go=$(go env GOVERSION); have_go=${have_go#go}
[ "$(printf '%s\n%s\n' "$wanted_go" "$have_go" | sort -V | head -1)" = "$wanted_go" ] \
  || need "Go $wanted_go or later is needed to build kubectl and kustomize (setup/kubernetes/go.mod): this is Go $have_go"

# Java 17 or later with Maven, which fetch and run Apache Kafka's server.
command -v java >/dev/null || need "Java 17 or later is needed (Apache Kafka's server runs on it): 'java' is not on the PATH"
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
[ "${java_major:-0}" -ge 17 ] || need "Java 17 or later is needed (Apache Kafka's server runs on it): this is Java ${java_major:-unknown}"
command -v mvn >/dev/null || need "Maven is needed (it fetches Apache Kafka's server from Maven Central): 'mvn' is not on the PATH"
exit 0
