#!/usr/bin/env bash
# Set everything up (if not already done) and run the main job: the whole SimFormer weak-shot pipeline on
# the built-in synthetic split (generated on first use): stage 1 (proposal-pixel + complementary +
# pixel-pixel similarity transfer) -> pseudo-labels of the training images -> retraining, each stage
# evaluated (mIoU, base / novel mIoU, hIoU), with prediction overlays, plots and a summary table.
#   bash tools/run_main.sh [extra KEY VALUE overrides for every stage]
# Re-running skips finished stages (and resumes an interrupted one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"
CONFIG="${SIMFORMER_MAIN_CONFIG:-configs/synthetic/simformer/seg_crosim.yaml}"
OUT="${SIMFORMER_MAIN_OUTPUT:-output/pipeline/synthetic}"
exec "$ROOT/.venv/bin/python" tools/weakshot_pipeline.py --stage1-config "$CONFIG" --output-dir "$OUT" "$@"
