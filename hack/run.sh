#!/usr/bin/env bash
# The operator's main job on an embedded default: a local control plane with the CRDs, all three
# controllers running against it, and the samples applied. Ctrl-C stops the controllers; the control
# plane keeps running until `make cluster-down`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
hack/tools.sh >/dev/null
cargo build --workspace --bins
target/debug/testcluster up --dir .cluster
export KUBECONFIG="$root/.cluster/kubeconfig"
kubectl=.cluster/bin/kubectl

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT

# The samples' ClusterPackRepository (deploy/samples/clusterpackrepository.yaml) points at
# http://127.0.0.1:8879/: a Helm repository of tests/charts/genpack, packaged and indexed by the pinned
# helm and served by a tiny static server (tests/src/bin/chartrepo.rs).
tools=$(hack/tools.sh --print)
repo=.cluster/charts
rm -rf "$repo" && mkdir -p "$repo"
export HELM_CACHE_HOME="$root/.cluster/helm/cache" HELM_CONFIG_HOME="$root/.cluster/helm/config" HELM_DATA_HOME="$root/.cluster/helm/data"
for v in 0.1.0 0.1.3 0.2.0 1.0.0; do
  "$tools/helm" package tests/charts/genpack --version "$v" --destination "$repo" >/dev/null
done
"$tools/helm" repo index "$repo"
target/debug/chartrepo --dir "$repo" --address 127.0.0.1:8879 >.cluster/chartrepo.log 2>&1 &
pids+=($!)
echo "serving genpack 0.1.0, 0.1.3, 0.2.0, 1.0.0 at http://127.0.0.1:8879/ (the samples' kubit-packs)"

# pack-controller runs the pinned helm (flag --helm-binary / env HELM_BINARY) in its work dir.
export HELM_BINARY="$tools/helm" PACK_WORK_DIR="$root/.cluster/pack-work"
# reflector-controller with the chart's defaults: targets must consent, kube-* never receive copies.
export REQUIRE_CONSENT=true DENY_TARGET_NAMESPACES='kube-*'
port=18080
for c in pack-controller reflector-controller redeploy-controller; do
  target/debug/$c --metrics-address "127.0.0.1:$port" --leader-elect=true >".cluster/$c.log" 2>&1 &
  pids+=($!)
  echo "started $c: metrics on http://127.0.0.1:$port/metrics, log in .cluster/$c.log"
  port=$((port + 1))
done

if [[ -d deploy/samples ]] && compgen -G "deploy/samples/*.yaml" >/dev/null; then
  # Samples may refer to CRDs just installed; retry briefly while discovery catches up.
  applied=
  for _ in 1 2 3 4 5; do
    if $kubectl apply -f deploy/samples/; then applied=1; break; fi
    sleep 1
  done
  if [[ -z "$applied" ]]; then
    echo "kubectl apply -f deploy/samples/ failed 5 times; see the errors above" >&2
    exit 1
  fi
  # Show the samples at work: the Pack installed by helm, the reflector's copies.
  if $kubectl wait pack/test -n default --for=jsonpath='{.status.state}'=Applied --timeout=120s; then
    $kubectl get packs,clusterpackrepositories,secretreflectors -A
  else
    echo "the sample Pack is not Applied after 120s; see .cluster/pack-controller.log and:" >&2
    $kubectl get packs -A -o wide >&2 || true
  fi
fi

cat <<MSG

Pack Operator is running against a local control plane.
  export KUBECONFIG=$root/.cluster/kubeconfig
  .cluster/bin/kubectl get packs,clusterpackrepositories,secretreflectors -A
  .cluster/bin/kubectl get deployments -A
Ctrl-C stops the controllers; \`make cluster-down\` stops the control plane.
MSG
wait
