#!/usr/bin/env bash
# The external check against esper-lite HEAD (2016337e, value-head schema v2); not run by CI (no esper).
#
#   scripts/check_esper_head.sh /path/to/esper-lite-HEAD-checkout [OUT_DIR]
#
# Environment: PYTHON (default: python) must import torch, pytest and esper HEAD's dependencies (esper
# itself is taken from <checkout>/src); SUITES (default: "tests/tamiyo/networks tests/simic/agent");
# BASELINE=0 skips the unpatched run; PYTEST_ARGS adds pytest options (e.g. --continue-on-collection-errors).
# Runs esper's own tests unpatched (baseline) and with esper_fast.patch_esper() applied before collection
# (scripts/esper_check/esper_patch_plugin.py, which prints the layout found: 2016337e), JUnit XML in
# OUT_DIR, then a comparison of the two runs (scripts/esper_check/compare_junit.py). Without an importable
# torchvision an import-only stand-in is put on the path (as check_esper.sh does). Before the suites,
# scripts/esper_check/head_state_dict.py compares esper's default network with FactoredPolicyV2() (state_dict.txt)
# and scripts/esper_check/head_checkpoint.py runs esper's PPOAgent.save()/load() against export-esper / load_policy
# (checkpoint.txt). (The 0872525b check,
# with its smoke script, is check_esper.sh.)
set -uo pipefail
ESPER=${1:?usage: scripts/check_esper_head.sh ESPER_HEAD_CHECKOUT [OUT_DIR]}
ESPER=$(cd "$ESPER" && pwd)
OUT=${2:-$(mktemp -d /tmp/esper_check_head.XXXXXX)}
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-python}
SUITES=${SUITES:-"tests/tamiyo/networks tests/simic/agent"}
EXTRA=""
if ! PYTHONPATH="$ESPER/src" "$PY" -c "import torchvision" >/dev/null 2>&1; then  # as check_esper.sh
  STUB="$OUT/stubs/torchvision"
  mkdir -p "$STUB"
  printf 'from . import datasets, transforms  # noqa: F401\n__version__ = "0.0-stub"\n' > "$STUB/__init__.py"
  for m in datasets transforms; do
    printf 'def __getattr__(name):\n    raise RuntimeError(f"torchvision stub: torchvision.%s.{name} is not available in this check")\n' "$m" > "$STUB/$m.py"
  done
  EXTRA=":$OUT/stubs"
  echo "check_esper_head: torchvision not importable here; using an import-only stand-in ($STUB)"
fi
export PYTHONPATH="$REPO:$HERE/esper_check:$ESPER/src$EXTRA"
echo "check_esper_head: esper at $ESPER, output in $OUT"
"$PY" -c "import esper_fast; p = esper_fast.patch_esper(); print('layout', p.layout, 'rebound', p.patched)" \
  2>&1 | tee "$OUT/detect.txt"
"$PY" "$HERE/esper_check/head_state_dict.py" 2>&1 | tee "$OUT/state_dict.txt"  # esper's default network vs FactoredPolicyV2()
"$PY" "$HERE/esper_check/head_checkpoint.py" "$OUT/checkpoint" 2>&1 | grep -E '^[0-9] ' | tee "$OUT/checkpoint.txt"  # HEAD save/load vs import/export

run_suites() {  # $1 = name, $2 = ESPER_FAST_PATCH
  (cd "$ESPER" && ESPER_FAST_PATCH=$2 "$PY" -m pytest -p no:cacheprovider -p esper_patch_plugin -q -o addopts="" \
     -m "not integration and not stress" --tb=short -ra --junitxml="$OUT/$1.xml" ${PYTEST_ARGS:-} $SUITES > "$OUT/$1.txt" 2>&1)
  echo "$1: $(tail -n 1 "$OUT/$1.txt")"
}
[ "${BASELINE:-1}" = "0" ] || run_suites baseline 0
run_suites patched 1
files=("$OUT/patched.xml")
[ -f "$OUT/baseline.xml" ] && files=("$OUT/baseline.xml" "$OUT/patched.xml")
"$PY" "$HERE/esper_check/compare_junit.py" "${files[@]}" | tee "$OUT/summary.txt"
