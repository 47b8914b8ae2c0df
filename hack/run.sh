#!/usr/bin/env bash
# The operator's main job on an embedded default: a local control plane with the CRDs and the admission
# policies, all three controllers running against it, and the samples applied. Ctrl-C stops the controllers,
# the chart repository and the OCI registry; the control plane keeps running until `make cluster-down`.
#
# Overrides (the e2e test tests/tests/make_run.rs runs a second instance next to a developer's `make run`):
#   PACK_OPERATOR_RUN_DIR        state directory of the control plane and the logs (default .cluster)
#   PACK_OPERATOR_CHART_PORT     port of the samples' chart repository (default 8879)
#   PACK_OPERATOR_REGISTRY_PORT  port of the samples' OCI registry (default 8880)
#   PACK_OPERATOR_METRICS_PORT   metrics port of pack-controller; reflector and redeploy take the next two
#                                (default 18080)
#   PACK_OPERATOR_BIN_DIR        run the workspace binaries found there instead of `cargo build`ing them
set -euo pipefail
# A shell cannot trap a signal that was ignored when it started, and `make run` started as a background
# job of a script starts with SIGINT ignored: Ctrl-C would then leave this script waiting forever. Start
# again with the default dispositions (GNU env), once.
if [[ -z "${PACK_OPERATOR_RUN_SIGNALS:-}" ]] && env --default-signal=INT true 2>/dev/null; then
  export PACK_OPERATOR_RUN_SIGNALS=default
  exec env --default-signal=INT,TERM bash "$0" "$@"
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p "${PACK_OPERATOR_RUN_DIR:-.cluster}"
run=$(cd "${PACK_OPERATOR_RUN_DIR:-.cluster}" && pwd)
chart_port=${PACK_OPERATOR_CHART_PORT:-8879}
registry_port=${PACK_OPERATOR_REGISTRY_PORT:-8880}
metrics_port=${PACK_OPERATOR_METRICS_PORT:-18080}
start=$SECONDS
step() { echo "==> $* (at $((SECONDS - start))s)" >&2; }

# Everything started in the background is stopped on exit and on Ctrl-C. Background jobs of a
# non-interactive shell ignore SIGINT (chartrepo would outlive us), so they get an explicit SIGTERM.
pids=()
stop_children() {
  trap '' INT TERM # a second Ctrl-C must not cut the clean-up short
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
  fi
}
interrupted() {
  echo >&2
  echo "stopping the controllers, the chart repository and the OCI registry; the control plane keeps running (\`make cluster-down\` stops it)" >&2
  stop_children
  exit 130
}
trap stop_children EXIT
trap interrupted INT TERM

step "tools: kube-apiserver, kube-controller-manager, kubectl, etcd, helm, registry (hack/tools.sh; built once, ~30 min on 2 cores)"
tools=$(hack/tools.sh)
if [[ -n "${PACK_OPERATOR_BIN_DIR:-}" ]]; then
  bin=$(cd "$PACK_OPERATOR_BIN_DIR" && pwd)
else
  step "cargo build --workspace --bins"
  cargo build --workspace --bins
  bin=$root/target/debug
fi

step "control plane: etcd, kube-apiserver, kube-controller-manager with the CRDs (state in $run)"
"$bin/testcluster" up --dir "$run"
export KUBECONFIG="$run/kubeconfig"
kubectl=$run/bin/kubectl

# The chart installs these with the CRDs; without them invalid annotations and vars get in.
step "admission policies: kubectl apply -f deploy/admission/"
$kubectl apply -f deploy/admission/

# The samples' ClusterPackRepository (deploy/samples/clusterpackrepository.yaml) points at
# http://127.0.0.1:8879/: a Helm repository of tests/charts/genpack, packaged and indexed by the pinned
# helm and served by a tiny static server (tests/src/bin/chartrepo.rs).
step "chart repository for the samples: tests/charts/genpack"
repo=$run/charts
rm -rf "$repo" && mkdir -p "$repo"
export HELM_CACHE_HOME="$run/helm/cache" HELM_CONFIG_HOME="$run/helm/config" HELM_DATA_HOME="$run/helm/data"
for v in 0.1.0 0.1.3 0.2.0 1.0.0; do
  "$tools/helm" package tests/charts/genpack --version "$v" --destination "$repo" >/dev/null
done
"$tools/helm" repo index "$repo"
"$bin/chartrepo" --dir "$repo" --address "127.0.0.1:$chart_port" >"$run/chartrepo.log" 2>&1 &
pids+=($!)
echo "serving genpack 0.1.0, 0.1.3, 0.2.0, 1.0.0 at http://127.0.0.1:$chart_port/ (the samples' kubit-packs)"

# The samples' kubit-packs-oci (deploy/samples/oci-repository.yaml) points at oci://127.0.0.1:8880/charts:
# a CNCF Distribution registry (the e2e tests' one, tests/src/registry.rs) on loopback over plain HTTP,
# its storage in the run dir, with the same genpack archives pushed by the pinned helm.
step "OCI registry for the samples: genpack pushed with helm push"
registry=$run/registry
rm -rf "$registry" && mkdir -p "$registry"
cat >"$registry/config.yml" <<CONFIG
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $registry/storage
http:
  addr: 127.0.0.1:$registry_port
CONFIG
"$tools/registry" serve "$registry/config.yml" >"$run/registry.log" 2>&1 &
registry_pid=$!
pids+=("$registry_pid")
for ((i = 0; ; i++)); do
  if ! kill -0 "$registry_pid" 2>/dev/null; then
    echo "the registry ended at start (port $registry_port taken? set PACK_OPERATOR_REGISTRY_PORT); $run/registry.log:" >&2
    cat "$run/registry.log" >&2
    exit 1
  fi
  # The registry listens: bash's /dev/tcp connects (in a subshell, which closes it).
  if (: </dev/tcp/127.0.0.1/"$registry_port") 2>/dev/null; then break; fi
  if ((i >= 300)); then
    echo "the registry does not listen on 127.0.0.1:$registry_port after 30s; see $run/registry.log" >&2
    exit 1
  fi
  sleep 0.1
done
for v in 0.1.0 0.1.3 0.2.0 1.0.0; do
  if ! pushed=$("$tools/helm" push "$repo/genpack-$v.tgz" "oci://127.0.0.1:$registry_port/charts" --plain-http 2>&1); then
    echo "helm push of genpack $v failed: $pushed" >&2
    exit 1
  fi
done
echo "serving genpack 0.1.0, 0.1.3, 0.2.0, 1.0.0 at oci://127.0.0.1:$registry_port/charts (the samples' kubit-packs-oci), log in $run/registry.log"

step "controllers"
# pack-controller runs the pinned helm (flag --helm-binary / env HELM_BINARY) in its work dir.
export HELM_BINARY="$tools/helm" PACK_WORK_DIR="$run/pack-work"
# reflector-controller with the chart's defaults: both kinds (SecretReflector, ConfigMapReflector), targets must consent, kube-* never receive copies.
export REQUIRE_CONSENT=true DENY_TARGET_NAMESPACES='kube-*' REFLECTOR_KINDS=secret,configmap
port=$metrics_port
for c in pack-controller reflector-controller redeploy-controller; do
  "$bin/$c" --metrics-address "127.0.0.1:$port" --leader-elect=true >"$run/$c.log" 2>&1 &
  pids+=($!)
  echo "started $c: metrics on http://127.0.0.1:$port/metrics, log in $run/$c.log"
  port=$((port + 1))
done

if [[ -d deploy/samples ]] && compgen -G "deploy/samples/*.yaml" >/dev/null; then
  step "samples: kubectl apply -f deploy/samples/"
  samples=$run/samples
  rm -rf "$samples" && mkdir -p "$samples"
  for f in deploy/samples/*.yaml; do
    sed -e "s#http://127.0.0.1:8879/#http://127.0.0.1:$chart_port/#g" \
      -e "s#oci://127.0.0.1:8880/#oci://127.0.0.1:$registry_port/#g" "$f" >"$samples/$(basename "$f")"
  done
  # Samples may refer to CRDs just installed; retry briefly while discovery catches up.
  applied=
  for _ in 1 2 3 4 5; do
    if $kubectl apply -f "$samples/"; then applied=1; break; fi
    sleep 1
  done
  if [[ -z "$applied" ]]; then
    echo "kubectl apply -f deploy/samples/ failed 5 times; see the errors above" >&2
    exit 1
  fi
  # Show the samples at work: the Pack installed by helm, the reflector's copies.
  step "waiting (up to 120s) for the sample Packs test (HTTP repository) and test-oci (OCI) to be Applied"
  if $kubectl wait pack/test pack/test-oci -n default --for=jsonpath='{.status.state}'=Applied --timeout=120s; then
    $kubectl get packs,clusterpackrepositories,secretreflectors -A
  else
    echo "the sample Packs are not Applied after 120s; see $run/pack-controller.log and:" >&2
    $kubectl get packs -A -o wide >&2 || true
  fi
fi

cat <<MSG

Pack Operator is running against a local control plane.
  export KUBECONFIG=$run/kubeconfig
  $kubectl get packs,clusterpackrepositories,secretreflectors -A
  $kubectl get deployments -A
Ctrl-C stops the controllers; \`make cluster-down\` stops the control plane.
MSG
wait
