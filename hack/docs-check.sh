#!/usr/bin/env bash
# Fails when a command-line flag of a controller is not documented: every `--flag` in each binary's --help
# (built in target/debug; make test builds them first) must appear as `--flag` in README.md or docs/*.md.
#   hack/docs-check.sh              check (make test)
#   hack/docs-check.sh --self-test  prove the check fails on a flag missing from the docs
# And every metric family the controllers register (`registry.register("name", ...)` in their sources,
# exported as pack_operator_<name>[_total|_info]) must appear in README.md or docs/*.md. (The dashboard
# and alerts are checked against the same names by tests/tests/chart.rs.)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bins=${DOCS_CHECK_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}

# flags_of BINARY: the long flags its --help lists (without --help/--version).
flags_of() {
  "$1" --help | grep -oE '^\s+(-[a-zA-Z], )?--[a-z0-9-]+' | grep -oE -- '--[a-z0-9-]+' |
    grep -vxE -- '--(help|version)' | sort -u
}

# The registered metric names, without the prefix and the _total/_info suffix the encoder adds.
metric_names() {
  cat "$root"/common/src/*.rs "$root"/{pack,redeploy,reflector}-controller/src/*.rs \
    "$root"/{pack,redeploy,reflector}-controller/src/*/*.rs 2>/dev/null | tr '\n' ' ' |
    grep -oE '\.register(_with_unit)?\(\s*"[a-z_]+"' | grep -oE '"[a-z_]+"' | tr -d '"' | sort -u
}

# check DOCS_DIR: 0 when every flag of every controller is in DOCS_DIR's README.md or docs/*.md.
check() {
  local docs=$1 missing=0 bin flag
  for bin in pack-controller redeploy-controller reflector-controller; do
    [[ -x $bins/$bin ]] || { echo "docs-check: $bins/$bin is missing: cargo build -p $bin" >&2; return 2; }
    while read -r flag; do
      if ! grep -qF -- "\`$flag\`" "$docs/README.md" "$docs"/docs/*.md 2>/dev/null &&
        ! grep -qF -- "\`$flag " "$docs/README.md" "$docs"/docs/*.md 2>/dev/null; then
        echo "docs-check: $bin $flag is not documented (README.md or docs/*.md, as \`$flag\`)" >&2
        missing=1
      fi
    done < <(flags_of "$bins/$bin")
  done
  local name
  while read -r name; do
    if ! grep -qF -- "pack_operator_$name" "$docs/README.md" "$docs"/docs/*.md 2>/dev/null; then
      echo "docs-check: metric pack_operator_$name is not documented (README.md or docs/*.md)" >&2
      missing=1
    fi
  done < <(metric_names)
  return $missing
}

if [[ ${1:-} == --self-test ]]; then
  # A copy of the docs without one flag (--identity, a runtime flag every controller has) must fail.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/docs"
  cp "$root/README.md" "$tmp/"
  cp "$root"/docs/*.md "$tmp/docs/"
  check "$tmp" || { echo "docs-check: self-test needs the real docs to pass first" >&2; exit 1; }
  sed -i 's/`--identity`/`--ident1ty`/g; s/`--identity /`--ident1ty /g' "$tmp/README.md" "$tmp"/docs/*.md
  if check "$tmp" 2>"$tmp/err"; then
    echo "docs-check: self-test FAILED: a missing --identity went unnoticed" >&2
    exit 1
  fi
  grep -q -- "--identity is not documented" "$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  # And without one metric (pack_operator_condition).
  cp "$root/README.md" "$tmp/"
  cp "$root"/docs/*.md "$tmp/docs/"
  sed -i 's/pack_operator_condition/pack_operator_c0ndition/g' "$tmp/README.md" "$tmp"/docs/*.md
  if check "$tmp" 2>"$tmp/err"; then
    echo "docs-check: self-test FAILED: an undocumented pack_operator_condition went unnoticed" >&2
    exit 1
  fi
  grep -q -- "metric pack_operator_condition is not documented" "$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  echo "docs-check: self-test ok (an undocumented flag or metric fails the check)"
  exit 0
fi
check "$root"
echo "docs-check: every controller flag and metric is documented"
