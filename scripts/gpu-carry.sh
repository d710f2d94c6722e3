#!/usr/bin/env bash
# Fill .gpu-carry/ (git-ignored) with what `scripts/gpu-day.sh` needs on a GPU machine that reaches no registry:
#   wheels/  cp312 manylinux wheels of the packages its image lacks, at the versions installed in .venv here
#   data/    the Fashion-MNIST and MNIST IDX files, gzipped (from the user cache: `vib-deploy data fetch ...`)
# and fail when the working tree plus the carry exceed what one `run` call takes (64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CARRY=${GPU_CARRY:-.gpu-carry}
LIMIT=$((64 * 1024 * 1024))
PACKAGES="pydantic pydantic-core annotated-types typing-inspection typing-extensions torch-pruning"
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/data/mnist" "$CARRY/data/fashion-mnist"
specs=$("$PY" -c "import importlib.metadata as m, sys; print(' '.join(f'{p}=={m.version(p)}' for p in sys.argv[1:]))" $PACKAGES)
echo "wheels: $specs"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" $specs
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/vib-deploy/data
for ds in mnist fashion-mnist; do
  "$PY" -m vib_deploy data fetch "$ds" >/dev/null
  for f in "$CACHE/$ds"/*; do
    case "$f" in
      *.gz) cp "$f" "$CARRY/data/$ds/" ;;
      *) gzip -9 -c "$f" > "$CARRY/data/$ds/$(basename "$f").gz" ;;
    esac
  done
done
carry=$(du -sb "$CARRY" | cut -f1)
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true) | awk '{s+=$1} END {print s+0}')
echo "carry $CARRY: $((carry / 1024)) KiB; working tree: $((tree / 1024)) KiB; together $(((carry + tree) / 1024)) KiB of $((LIMIT / 1024)) KiB"
if [ $((carry + tree)) -gt $LIMIT ]; then
  echo "error: working tree + $CARRY exceed 64 MiB: one run call cannot take them" >&2
  exit 2
fi
