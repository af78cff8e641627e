#!/usr/bin/env bash
# Set everything up (if not already done) and run the main job: train + evaluate the default model on
# the built-in synthetic weak-shot split (generated on first use), print the metrics table (mIoU, base /
# novel mIoU, hIoU), write prediction overlays.
#   bash tools/run_main.sh [extra train_net.py KEY VALUE overrides]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"
CONFIG="${SIMFORMER_MAIN_CONFIG:-configs/synthetic/maskformer_R18_weakshot.yaml}"
exec "$ROOT/.venv/bin/python" train_net.py --config-file "$CONFIG" "$@"
