#!/usr/bin/env bash
# The GPU day in one call, from the repository root of a GPU machine (see docs/gpu.md, "GPU day"):
#   scripts/gpu-day.sh            install the carried wheels + the project, then `vib-deploy gpu-day` (ends within 9 min)
#   scripts/gpu-day.sh --dry-run [--runs DIR]  the same steps on this CPU with tiny data (no install; tests run it)
# Results: $OUT/gpu-day.md, gpu-day.json, gpu-day.log ($OUT defaults to ./gpu-day-out).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-$PWD/gpu-day-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-.gpu-carry}
if [ "${1:-}" = "--dry-run" ]; then
  exec "$PY" -m vib_deploy gpu-day --dry-run --out "$OUT" "${@:2}"
fi
install() {
  echo "== install: $CARRY/wheels/*.whl into /tmp/vib-site (PYTHONPATH), then pip install --no-deps -e ."
  if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vib-site \
      "$CARRY"/wheels/*.whl || return 1
  else
    echo "note: no wheels in $CARRY/wheels (make gpu-carry fills it): using what is installed"
  fi
  # the machine reaches no package index: build the editable install with its own setuptools
  PYTHONPATH=/tmp/vib-site "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || echo "note: pip install -e . failed; running from the source tree (PYTHONPATH=$PWD)"
}
install 2>&1 | tee -a "$OUT/gpu-day.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "error: installing the carried wheels failed" | tee -a "$OUT/gpu-day.log"; exit 2; }
export PYTHONPATH=/tmp/vib-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d "$CARRY/data" ]; then export VIB_DEPLOY_DATA=$PWD/$CARRY/data; fi
exec "$PY" -m vib_deploy gpu-day --out "$OUT" --elapsed $(( $(date +%s) - START ))
