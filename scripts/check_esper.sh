#!/usr/bin/env bash
# The external check against a real esper-lite checkout (not run by CI: CI has no esper).
#
#   scripts/check_esper.sh /path/to/esper-lite-checkout [OUT_DIR]
#
# Environment: PYTHON (default: python) must import torch and esper's own dependencies (esper itself is
# taken from <checkout>/src); SUITES (default: "tests/tamiyo/networks tests/simic"); BASELINE=0 skips the
# unpatched run. Steps:
#   1. scripts/esper_check/smoke.py: esper's PPOAgent on the patched class, a rollout and an update on
#      synthetic inputs, save/load, esper -> esper_fast -> esper checkpoints;
#   2. esper's test suites unpatched (baseline) and with esper_fast.patch_esper() applied
#      (scripts/esper_check/esper_patch_plugin.py), JUnit XML in OUT_DIR, then a comparison.
# If torchvision cannot be imported (the PyPI wheel needs CUDA torch), an import-only stand-in is put on
# the path: esper imports it at module level for CIFAR loading, which these suites do not exercise
# (a test that does use it fails, and is reported as such).
set -uo pipefail
ESPER=${1:?usage: scripts/check_esper.sh ESPER_CHECKOUT [OUT_DIR]}
ESPER=$(cd "$ESPER" && pwd)
OUT=${2:-$(mktemp -d /tmp/esper_check.XXXXXX)}
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-python}
SUITES=${SUITES:-"tests/tamiyo/networks tests/simic"}
EXTRA=""
if ! PYTHONPATH="$ESPER/src" "$PY" -c "import torchvision" >/dev/null 2>&1; then
  STUB="$OUT/stubs/torchvision"
  mkdir -p "$STUB"
  printf 'from . import datasets, transforms  # noqa: F401\n__version__ = "0.0-stub"\n' > "$STUB/__init__.py"
  for m in datasets transforms; do
    printf 'def __getattr__(name):\n    raise RuntimeError(f"torchvision stub: torchvision.%s.{name} is not available in this check")\n' "$m" > "$STUB/$m.py"
  done
  EXTRA=":$OUT/stubs"
  echo "check_esper: torchvision not importable here; using an import-only stand-in ($STUB)"
fi
export PYTHONPATH="$REPO:$HERE/esper_check:$ESPER/src$EXTRA"
echo "check_esper: esper at $ESPER ($(git -C "$ESPER" rev-parse --short HEAD 2>/dev/null || echo 'no git')), output in $OUT"

echo "== 1. smoke: esper's PPOAgent on esper_fast =="
"$PY" "$HERE/esper_check/smoke.py" 2>&1 | tee "$OUT/smoke.txt"
smoke=${PIPESTATUS[0]}

run_suites() {  # $1 = name, $2 = ESPER_FAST_PATCH
  (cd "$ESPER" && ESPER_FAST_PATCH=$2 "$PY" -m pytest -p no:cacheprovider -p esper_patch_plugin -q -o addopts="" \
     -m "not integration and not stress" --tb=short -ra --junitxml="$OUT/$1.xml" $SUITES > "$OUT/$1.txt" 2>&1)
  echo "$1: $(tail -n 1 "$OUT/$1.txt")"
}
echo "== 2. esper's tests ($SUITES) =="
[ "${BASELINE:-1}" = "0" ] || run_suites baseline 0
run_suites patched 1
files=("$OUT/patched.xml")
[ -f "$OUT/baseline.xml" ] && files=("$OUT/baseline.xml" "$OUT/patched.xml")
"$PY" "$HERE/esper_check/compare_junit.py" "${files[@]}" | tee "$OUT/summary.txt"
exit "$smoke"
