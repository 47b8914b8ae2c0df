#!/usr/bin/env bash
# Lints the GitHub Actions workflows (.github/workflows) with actionlint, built once from its Go module at a
# pinned version into the tools cache (the one hack/tools.sh uses) and reused after that. The workflows
# cannot run here; this checks their syntax, expressions, job graph and action inputs.
#   hack/actionlint.sh            lint (builds actionlint first if it is not cached)
#   hack/actionlint.sh --path     only print the binary's path (building it if needed)
set -euo pipefail
ACTIONLINT_VERSION=v1.7.7
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PACK_OPERATOR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pack-operator/tools}
dir="$cache/actionlint-$ACTIONLINT_VERSION"
bin="$dir/actionlint"
if [[ ! -x $bin ]]; then
  echo "actionlint: building $ACTIONLINT_VERSION from github.com/rhysd/actionlint (once, into $dir)" >&2
  mkdir -p "$dir"
  CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" GOTOOLCHAIN=local GOBIN="$dir" \
    nice go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
fi
if [[ ${1:-} == --path ]]; then
  echo "$bin"
  exit 0
fi
cd "$root"
# shellcheck and pyflakes are not installed here: actionlint skips those checks of run: scripts.
"$bin" -shellcheck= -pyflakes= .github/workflows/*.yml
