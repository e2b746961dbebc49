#!/usr/bin/env bash
# Builds the tools go.mod lists (kubectl, kustomize) into the folder given, at the versions go.mod pins:
# `setup/kubernetes/build.sh .tools/bin`. Go's module and build caches make a second build take seconds;
# the first, on a new machine, takes minutes.
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUTPUT_FOLDER}")
cd "$(dirname "$0")"
mkdir -p "$out"
release=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)       # v1.37.2
minor=${release#v*.}; minor=${minor%%.*}
# Without these stamps kubectl reports the version "v0.0.0-master+$Format:%H$" and `kubectl version` fails.
stamps=""
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamps+=" -X $package.gitVersion=$release -X $package.gitMajor=1 -X $package.gitMinor=$minor"
  stamps+=" -X $package.gitTreeState=clean"
done
mapfile -t tools < <(sed -n '/^tool (/,/^)/{/^\t/s/^\t//p}' go.mod)
CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags="-s -w$stamps" -o "$out/" "${tools[@]}"
