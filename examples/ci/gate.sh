#!/usr/bin/env bash
# Profile the base and the head of a change with `go test -bench -cpuprofile` and gate on
# `goflame diff`: exit 0 when no function's CPU share grew significantly over the thresholds,
# 1 on a regression (each one listed), 2 when something could not be run or read.
#
# usage: gate.sh BASE_REF HEAD_REF [PACKAGE_DIR] [-- extra goflame diff options]
#
#   BASE_REF, HEAD_REF  commits (anything `git worktree add` takes) of the repository in the
#                       current directory
#   PACKAGE_DIR         the Go package whose benchmarks are run, relative to the repository root
#                       (default: examples/regress)
#
# Environment: BENCH (benchmark regexp, default "."), BENCHTIME (go test -benchtime, default
# 45000x: a fixed iteration count, so both sides sample the same work whatever the runner's
# load), OUT (output directory, default ./goflame-ci), GOFLAME (the goflame command).
# Writes OUT/base.pprof, OUT/head.pprof, OUT/diff.svg (differential flame graph),
# OUT/diff.md (the report as a PR comment) and OUT/diff.json.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
base_ref=$1
head_ref=$2
shift 2
pkg=examples/regress
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  pkg=$1
  shift
fi
[ "${1:-}" = "--" ] && shift

bench=${BENCH:-.}
benchtime=${BENCHTIME:-45000x}
out=$(mkdir -p "${OUT:-goflame-ci}" && cd "${OUT:-goflame-ci}" && pwd)
read -r -a goflame <<< "${GOFLAME:-goflame}"
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)

cleanup() {
  git -C "$repo" worktree remove --force "$work/base" >/dev/null 2>&1 || true
  git -C "$repo" worktree remove --force "$work/head" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

profile() {  # side ref
  local side=$1 ref=$2
  if ! git -C "$repo" worktree add --quiet --detach "$work/$side" "$ref"; then
    echo "gate: cannot check out $side ($ref)" >&2
    exit 2
  fi
  echo "gate: profiling $side ($ref): go test -bench '$bench' -benchtime $benchtime in $pkg" >&2
  if ! (cd "$work/$side/$pkg" && go test -run '^$' -bench "$bench" -benchtime "$benchtime" -count 1 \
          -cpuprofile "$out/$side.pprof" -o "$work/$side.test" >&2); then
    echo "gate: the $side benchmark failed" >&2
    exit 2
  fi
}

profile base "$base_ref"
profile head "$head_ref"

status=0
"${goflame[@]}" diff "$out/base.pprof" "$out/head.pprof" -o "$out/diff.svg" --format markdown "$@" \
  > "$out/diff.md" || status=$?
"${goflame[@]}" diff "$out/base.pprof" "$out/head.pprof" --format json "$@" > "$out/diff.json" 2>/dev/null || true
cat "$out/diff.md"
exit "$status"
