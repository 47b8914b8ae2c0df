#!/usr/bin/env bash
# Builds (once) and prints the directory of the pinned test tools: kube-apiserver, kube-controller-manager,
# kubectl, etcd, helm and registry (CNCF Distribution, the OCI registry of the e2e tests), each from its Go module. The binaries live in a cache outside the checkout, keyed by
# version, so every clone and every run on this machine reuses them; a warm call only checks that they run.
#
#   hack/tools.sh            build what is missing, print the bin directory
#   hack/tools.sh --print    print the bin directory without building
#
# Override the cache with PACK_OPERATOR_TOOLS_CACHE.
set -euo pipefail

K8S_VERSION=v1.36.3   # k8s.io/kubernetes; staging modules at v0.36.3 (tests/tools/k8s/go.mod)
ETCD_VERSION=v3.6.8   # the etcd kube-apiserver v1.36.3 is built against (tests/tools/etcd/go.mod)
HELM_VERSION=v4.3.1   # helm.sh/helm/v4 (tests/tools/helm/go.mod)
REGISTRY_VERSION=v3.0.0   # github.com/distribution/distribution/v3 (tests/tools/registry/go.mod)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PACK_OPERATOR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pack-operator/tools}
# The registry joined later: it is not in the directory name, so an existing cache only builds it (the warm
# check below still pins its version).
bin="$cache/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"

if [[ "${1:-}" == "--print" ]]; then echo "$bin"; exit 0; fi

log() { echo "tools: $*" >&2; }

export CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" GOTOOLCHAIN=local
mkdir -p "$bin"
# One builder at a time per cache (two test binaries or a parallel `make cluster` may ask at once).
exec 9>"$cache/.lock"
if ! flock -n 9; then
  # Who holds it (fuser lists this shell too, which has the file open).
  holder=$( (fuser "$cache/.lock" 2>/dev/null || true) | tr -s ' ' '\n' | grep -vx "$$" | grep -m1 . || true)
  [[ -z "$holder" ]] || holder="pid $holder: $(ps -o args= -p "$holder" 2>/dev/null | cut -c1-80 || true)"
  log "waiting for another build of the tools to finish: it holds $cache/.lock${holder:+ ($holder)}"
  log "(a first build takes ~20-30 min on 2 cores; this one reuses what it builds)"
  flock 9
  log "the other build is done; checking its tools"
fi

timed() { # name, then the command; records build seconds next to the binary
  local name=$1; shift
  local start=$SECONDS
  # A heartbeat, so a long `go build` is not mistaken for a hang.
  (while sleep 60; do log "still building $name ($(((SECONDS - start) / 60)) min)"; done) &
  local heartbeat=$!
  local status=0
  "$@" || status=$?
  kill "$heartbeat" 2>/dev/null || true
  wait "$heartbeat" 2>/dev/null || true
  ((status == 0)) || { log "building $name failed"; exit "$status"; }
  local took=$((SECONDS - start))
  echo "$took" >"$bin/.$name.build-seconds"
  log "built $name in ${took}s ($(du -h "$bin/$name" | cut -f1))"
}

build_k8s() {
  local maj=${K8S_VERSION#v}; maj=${maj%%.*}
  local min=${K8S_VERSION#v*.}; min=${min%%.*}
  local ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$maj -X $p.gitMinor=$min"
    ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$root/tests/tools/k8s" && go build -tags selinux,notest -ldflags "$ldf" -o "$bin/.k8s-build/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
  mv "$bin/.k8s-build/"* "$bin/" && rmdir "$bin/.k8s-build"
}

build_etcd() {
  (cd "$root/tests/tools/etcd" && go build -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
    -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
}

build_helm() {
  (cd "$root/tests/tools/helm" && go build -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    -o "$bin/helm.tmp" helm.sh/helm/v4/cmd/helm)
  mv "$bin/helm.tmp" "$bin/helm"
}

build_registry() {
  (cd "$root/tests/tools/registry" && nice go build \
    -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" \
    -o "$bin/registry.tmp" github.com/distribution/distribution/v3/cmd/registry)
  mv "$bin/registry.tmp" "$bin/registry"
}

[[ -x "$bin/etcd" ]] || { log "building etcd $ETCD_VERSION (first run only, ~2 min)"; timed etcd build_etcd; }
[[ -x "$bin/helm" ]] || { log "building helm $HELM_VERSION (first run only, ~3 min)"; timed helm build_helm; }
[[ -x "$bin/registry" ]] || { log "building registry $REGISTRY_VERSION (first run only, ~2 min)"; timed registry build_registry; }
if [[ ! -x "$bin/kube-apiserver" || ! -x "$bin/kube-controller-manager" || ! -x "$bin/kubectl" ]]; then
  log "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (first run only: ~20-30 min on 2 cores)"
  timed kube-apiserver build_k8s
fi

# Warm path: prove each binary runs and is the pinned version. (Capture first: `cmd | grep -q` can
# kill cmd with SIGPIPE, which pipefail turns into a failure.)
check() { # name, expected version, command...
  local name=$1 want=$2 out; shift 2
  out=$("$@" 2>&1) || { log "$name does not run: $out"; exit 1; }
  [[ "$out" == *"$want"* ]] || { log "$name is not $want: $out"; exit 1; }
}
check kube-apiserver "$K8S_VERSION" "$bin/kube-apiserver" --version
check kube-controller-manager "$K8S_VERSION" "$bin/kube-controller-manager" --version
check kubectl "$K8S_VERSION" "$bin/kubectl" version --client
check etcd "${ETCD_VERSION#v}" "$bin/etcd" --version
check helm "$HELM_VERSION" "$bin/helm" version --short
check registry "$REGISTRY_VERSION" "$bin/registry" --version
echo "$bin"
