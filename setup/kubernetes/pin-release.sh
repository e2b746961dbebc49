#!/usr/bin/env bash
# Pins this module to one Kubernetes release: `setup/kubernetes/pin-release.sh 1.37.2`.
# k8s.io/kubernetes's own go.mod points its staging modules (k8s.io/api, k8s.io/client-go, ...) at folders
# of its source tree, at version v0.0.0, so `go install k8s.io/kubernetes/cmd/kubectl@v1.37.2` fails.
# This writes go.mod afresh: the release required, one `replace` per staging module at the matching
# v0.X.Y (generated from the release's go.mod in the module cache), the tools it builds, then `go mod tidy`.
# Every k8s.io/* module stays at the one release. Commit go.mod and go.sum afterwards.
set -euo pipefail
cd "$(dirname "$0")"
release=${1:?usage: pin-release.sh KUBERNETES_VERSION (for example 1.37.2)}
release=${release#v}
staging="v0.${release#*.}"
modfile=$(go mod download -json "k8s.io/kubernetes@v$release" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
go_version=$(sed -n 's/^go \(.*\)$/\1/p' "$modfile")
# The tools stay those go.mod lists now (add one with `go get -tool PACKAGE`).
mapfile -t tools < <(sed -n '/^tool (/,/^)/{/^\t/s/^\t//p}' go.mod)
{
  echo "// The pinned Kubernetes tools (make setup builds them into .tools/bin). Written by pin-release.sh."
  echo "module guestinfo/setup/kubernetes"
  echo
  echo "go $go_version"
  echo
  echo "tool ("
  printf '\t%s\n' "${tools[@]}"
  echo ")"
  echo
  echo "require k8s.io/kubernetes v$release"
  echo
  echo "replace ("
  grep -E '^\s+k8s\.io/\S+ v0\.0\.0$' "$modfile" | awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod
rm -f go.sum
go mod tidy
