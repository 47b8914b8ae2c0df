#!/usr/bin/env bash
# make package: publishes the chart with the pinned helm.
#   - a Helm repository in PACKAGE_DIR (default dist/charts): pack-operator-<version>.tgz and index.yaml
#     (merged with an index.yaml already there, so older versions stay listed). Serve that directory
#     (e.g. GitHub Pages) and install with
#       helm upgrade --install pack-operator pack-operator --repo <url> -n pack-operator --create-namespace
#     CHART_REPO_URL sets the absolute URL the index gives the archives (default: relative).
#   - OCI_REGISTRY=oci://host/path: also `helm push` the archive there (log in first with
#     `helm registry login`); OCI_PLAIN_HTTP=1 for a registry without TLS (a local one).
#   - CHART_VERSION: package as this version (and appVersion) instead of Chart.yaml's (a release tag).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
helm="$("$root/hack/tools.sh")/helm"
out=${PACKAGE_DIR:-$root/dist/charts}
mkdir -p "$out"

version_args=()
if [[ -n ${CHART_VERSION:-} ]]; then
  version_args=(--version "${CHART_VERSION#v}" --app-version "${CHART_VERSION#v}")
fi
archive=$("$helm" package "$root/deploy/charts/pack-operator" --destination "$out" "${version_args[@]}" |
  sed -n 's/^Successfully packaged chart and saved it to: //p')
[[ -f $archive ]] || { echo "package: helm package did not say where the archive went" >&2; exit 1; }
echo "package: $archive"

index_args=()
[[ -n ${CHART_REPO_URL:-} ]] && index_args+=(--url "$CHART_REPO_URL")
if [[ -f $out/index.yaml ]]; then
  # --merge keeps the entries of earlier releases; repo index rewrites the file in place.
  cp "$out/index.yaml" "$out/.index.previous.yaml"
  index_args+=(--merge "$out/.index.previous.yaml")
fi
"$helm" repo index "$out" "${index_args[@]}"
rm -f "$out/.index.previous.yaml"
echo "package: $out/index.yaml"

if [[ -n ${OCI_REGISTRY:-} ]]; then
  push_args=()
  [[ ${OCI_PLAIN_HTTP:-} == 1 ]] && push_args+=(--plain-http)
  "$helm" push "$archive" "$OCI_REGISTRY" "${push_args[@]}"
  echo "package: pushed to $OCI_REGISTRY"
fi
