#!/usr/bin/env bash
# Idle memory of the three controllers: starts each built binary (leader election off) against the shared
# local control plane, and prints VmRSS, RssAnon and RssFile from /proc after 40 s (docs/runtime.md,
# "Idle memory").
#
#   make cluster && cargo build --release --bins && hack/idle-rss.sh [release]
#
# The argument is the Cargo profile directory under target/ (default: release).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-release}
export KUBECONFIG=${KUBECONFIG:-$root/.cluster/kubeconfig}
[ -f "$KUBECONFIG" ] || { echo "no control plane: run make cluster first" >&2; exit 1; }
helm="$("$root/hack/tools.sh" --print)/helm"
work=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
pids=()
port=19100
for b in pack-controller reflector-controller redeploy-controller; do
  port=$((port + 1))
  extra=()
  [ "$b" = pack-controller ] && extra=(--work-dir "$work/pack" --helm-binary "$helm")
  "$root/target/$profile/$b" --leader-elect=false --metrics-address "127.0.0.1:$port" "${extra[@]}" \
    > "$work/$b.log" 2>&1 &
  pids+=($!)
done
sleep 40
for i in "${!pids[@]}"; do
  b=(pack-controller reflector-controller redeploy-controller)
  size=$(stat -c %s "$root/target/$profile/${b[$i]}")
  awk -v n="${b[$i]}" -v s="$size" '
    /^(VmRSS|RssAnon|RssFile):/ { v[$1] = $2 / 1024 }
    END { printf "%-21s binary %.1f MB  RSS %.1f MiB  anonymous %.1f MiB  file-backed %.1f MiB\n",
          n, s / 1e6, v["VmRSS:"], v["RssAnon:"], v["RssFile:"] }' "/proc/${pids[$i]}/status"
done
