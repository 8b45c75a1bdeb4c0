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
# Environment: BENCH (benchmark regexp, default "."), BENCHTIME (go test -benchtime of one
# round, default 15000x: a fixed iteration count, so both sides sample the same work), ROUNDS
# (default 4): the two sides' benchmarks run in alternation, ROUNDS times each, and each
# side's profiles are merged (go tool pprof -proto), so that a runner whose speed drifts
# (a neighbour starting, a CPU throttled) slows both sides alike rather than one;
# OUT (output directory, default ./goflame-ci), GOFLAME (the goflame command).
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
benchtime=${BENCHTIME:-15000x}
rounds=${ROUNDS:-4}
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

build() {  # side ref: check out the ref, compile its test binary
  local side=$1 ref=$2
  if ! git -C "$repo" worktree add --quiet --detach "$work/$side" "$ref"; then
    echo "gate: cannot check out $side ($ref)" >&2
    exit 2
  fi
  if ! (cd "$work/$side/$pkg" && go test -c -o "$work/$side.test" >&2); then
    echo "gate: the $side tests do not build" >&2
    exit 2
  fi
}

round() {  # side i: one round of the side's benchmarks, as go test -bench -cpuprofile runs them
  local side=$1 i=$2
  if ! (cd "$work/$side/$pkg" && "$work/$side.test" -test.run '^$' -test.bench "$bench" \
          -test.benchtime "$benchtime" -test.count 1 -test.cpuprofile "$work/$side.$i.pprof" >&2); then
    echo "gate: the $side benchmark failed" >&2
    exit 2
  fi
}

build base "$base_ref"
build head "$head_ref"
echo "gate: $rounds rounds of go test -bench '$bench' -benchtime $benchtime in $pkg, base and head in turn" >&2
for i in $(seq 1 "$rounds"); do
  if [ $((i % 2)) -eq 1 ]; then round base "$i"; round head "$i"; else round head "$i"; round base "$i"; fi
done
for side in base head; do
  if ! go tool pprof -proto "$work/$side".*.pprof > "$out/$side.pprof" 2>/dev/null; then
    echo "gate: cannot merge the $side profiles" >&2
    exit 2
  fi
done

status=0
"${goflame[@]}" diff "$out/base.pprof" "$out/head.pprof" -o "$out/diff.svg" --format markdown "$@" \
  > "$out/diff.md" || status=$?
"${goflame[@]}" diff "$out/base.pprof" "$out/head.pprof" --format json "$@" > "$out/diff.json" 2>/dev/null || true
cat "$out/diff.md"
exit "$status"
