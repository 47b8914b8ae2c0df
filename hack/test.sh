#!/usr/bin/env bash
# The whole test suite: format/lint gates, CRD drift, unit tests, and end-to-end tests against a real
# control plane (etcd + kube-apiserver + kube-controller-manager, built from Go modules on first use).
# `make test` runs this; so does CI.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export RUST_BACKTRACE=${RUST_BACKTRACE:-0}
start=$SECONDS
step() { echo; echo "==> $* (at $((SECONDS - start))s)"; }

step "tools (kube-apiserver, kube-controller-manager, kubectl, etcd, helm)"
tools=$(hack/tools.sh)
export PACK_OPERATOR_TOOLS="$tools"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "CRDs in deploy/crds match the Rust types"
cargo run -q -p common --bin crdgen -- --check

step "chart files and deploy/manifests match deploy/crds, deploy/admission and the chart"
hack/manifests.sh --check

step "actionlint .github/workflows (built once from its Go module, ~10 s, then cached)"
hack/actionlint.sh

step "build all binaries"
cargo build --workspace --all-targets

step "every flag (--help) and metric (registered) of the controllers is in README.md or docs/*.md"
hack/docs-check.sh
hack/docs-check.sh --self-test

step "start the test control plane"
cluster=$(mktemp -d "${TMPDIR:-/tmp}/pack-operator-test-cluster.XXXXXX")
cleanup() {
  target/debug/testcluster down --dir "$cluster" || true
  if [[ "${KEEP_TEST_CLUSTER:-}" != 1 ]]; then rm -rf "$cluster"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
target/debug/testcluster up --dir "$cluster"
export PACK_OPERATOR_TEST_KUBECONFIG="$cluster/kubeconfig"

step "unit and end-to-end tests"
results="$cluster/test-output.txt"
set +e
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e

# The images build these (deploy/docker/Dockerfile); no container engine here, so prove the release
# build itself. Last, so a broken test shows first; incremental after the first run.
step "release build of the three controllers and kubectl-pack"
if ! cargo build --release --locked -p pack-controller -p redeploy-controller -p reflector-controller -p kubectl-pack --bins; then
  echo "release build failed" | tee -a "$results"
  status=1
fi
# One closing line for the whole suite, summed over every test binary.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
  END { printf "%d passed, %d failed, %d skipped", p, f, s }' "$results")
echo
echo "make test finished in $((SECONDS - start))s"
echo "$summary"
exit "$status"
