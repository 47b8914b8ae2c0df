#!/usr/bin/env bash
# Builds (once) and prints the directory of the peers that `make bench-peers` compares us with, each from its
# Go module at a pinned release through a wrapper module under tests/tools/ (go.sum-verified):
#   reloader           github.com/stakater/Reloader (tests/tools/reloader/go.mod; its pinned github.com/openshift/api
#                      pseudo-version is refused by the module proxy here, replaced by the one its own
#                      openshift/client-go requires — only DeploymentConfig support uses it)
#   helm-controller    github.com/fluxcd/helm-controller (tests/tools/flux-helm/go.mod)
#   source-controller  github.com/fluxcd/source-controller (tests/tools/flux-source/go.mod)
# Newer tags refused by the module proxy here (2026-12): helm-controller v1.4.4 and v1.5.0, source-controller
# v1.7.4, Reloader v1.4.23.
# The binaries live in the same cache as hack/tools.sh's, in a directory keyed by the three versions.
#
#   hack/peers.sh            build what is missing, print the bin directory
#   hack/peers.sh --print    print the bin directory without building
#
# Override the cache with PACK_OPERATOR_TOOLS_CACHE.
set -euo pipefail

RELOADER_VERSION=v1.4.22
HELM_CONTROLLER_VERSION=v1.4.3
SOURCE_CONTROLLER_VERSION=v1.7.3

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PACK_OPERATOR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pack-operator/tools}
bin="$cache/peers-reloader-$RELOADER_VERSION-helm-controller-$HELM_CONTROLLER_VERSION-source-controller-$SOURCE_CONTROLLER_VERSION"

if [[ "${1:-}" == "--print" ]]; then echo "$bin"; exit 0; fi

log() { echo "peers: $*" >&2; }

export CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" GOTOOLCHAIN=local
mkdir -p "$bin"
exec 9>"$cache/.peers.lock"
if ! flock -n 9; then
  log "waiting for another build of the peers to finish ($cache/.peers.lock)"
  flock 9
fi

build() { # name, wrapper module dir, package, ldflags
  local name=$1 dir=$2 pkg=$3 ldf=$4 start=$SECONDS
  [[ -x "$bin/$name" ]] && return 0
  log "building $name from $pkg (first run only, a few minutes on 2 cores)"
  (while sleep 60; do log "still building $name ($(((SECONDS - start) / 60)) min)"; done) &
  local heartbeat=$! status=0
  (cd "$root/tests/tools/$dir" && nice go build -ldflags "-s -w $ldf" -o "$bin/$name.tmp" "$pkg") || status=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  ((status == 0)) || { log "building $name failed"; exit "$status"; }
  mv "$bin/$name.tmp" "$bin/$name"
  echo $((SECONDS - start)) >"$bin/.$name.build-seconds"
  log "built $name in $((SECONDS - start))s ($(du -h "$bin/$name" | cut -f1))"
}

build reloader reloader github.com/stakater/Reloader ""
build source-controller flux-source github.com/fluxcd/source-controller ""
build helm-controller flux-helm github.com/fluxcd/helm-controller ""

# The CRDs helm-controller and source-controller serve, from the same modules (config/crd/bases).
crds="$bin/crds"
if [[ ! -d "$crds" ]]; then
  mkdir -p "$crds.tmp"
  for m in helm-controller@$HELM_CONTROLLER_VERSION source-controller@$SOURCE_CONTROLLER_VERSION; do
    dir=$(cd "$root/tests/tools/flux-helm" && go mod download -json "github.com/fluxcd/$m" |
      sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
    cp "$dir"/config/crd/bases/*.yaml "$crds.tmp/"
  done
  chmod -R u+w "$crds.tmp" && mv "$crds.tmp" "$crds"
  log "copied the Flux CRDs to $crds"
fi

# Warm path: each binary runs (Reloader's --help builds a client first: it only has to print its usage or
# say it has no cluster).
for name in reloader source-controller helm-controller; do
  out=$(KUBECONFIG=/nonexistent "$bin/$name" --help 2>&1 || true)
  [[ "$out" == *Usage* || "$out" == *"Kubernetes client"* ]] || { log "$name does not run: ${out:0:200}"; exit 1; }
done
echo "$bin"
