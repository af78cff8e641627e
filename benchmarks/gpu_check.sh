#!/usr/bin/env bash
# Issue 22's GPU check in one device call: install the wheel bundle, then run benchmarks/gpu_check.py.
#
#   here:       bash tools/build_gpu_bundle.sh            # -> gpu_bundle/ (wheels + repository files + this script)
#   on the GPU: OUT=/path/for/tables bash gpu_bundle/gpu_check.sh [gpu_check.py options]
#   dry run:    SIMFORMER_BUNDLE_CPU_OK=1 OUT=/tmp/gpu bash gpu_bundle/gpu_check.sh --dry-run
#
# The bundle folder is found next to this script (the copy inside gpu_bundle/) or as ./gpu_bundle.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -f "$HERE/simformer-tree.tar.gz" ]; then BUNDLE="$HERE"; else BUNDLE="${SIMFORMER_BUNDLE:-$HERE/../gpu_bundle}"; fi
VENV="${SIMFORMER_VENV:-/tmp/simformer-venv}"
TREE="${SIMFORMER_TREE:-/tmp/simformer-tree}"
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$TREE" "$OUT"
tar -C "$TREE" -xzf "$BUNDLE/simformer-tree.tar.gz"
start=$(date +%s)
bash "$TREE/tools/install_gpu_bundle.sh" "$BUNDLE" "$VENV" "$TREE" 2>&1 | tee "$OUT/install.log"
echo "[gpu_check.sh] installed in $(( $(date +%s) - start )) s"
cd "$TREE"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$TREE/datasets}"
"$VENV/bin/python" benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
echo "[gpu_check.sh] all done in $(( $(date +%s) - start )) s; tables in $OUT"
