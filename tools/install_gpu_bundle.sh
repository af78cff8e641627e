#!/usr/bin/env bash
# Install the bundle of tools/build_gpu_bundle.sh on the device machine (no registry there) and check it.
#
#   bash install_gpu_bundle.sh BUNDLE_DIR [VENV_DIR] [TREE_DIR]
#
# Creates VENV_DIR (default /tmp/simformer-venv) on top of the image's Python (--system-site-packages:
# its torch, torchvision, timm, transformers, numpy, ... are used as they are), installs every wheel of
# BUNDLE_DIR with --no-deps --no-index, unpacks the repository files into TREE_DIR (default
# /tmp/simformer-tree) and checks that simformer and detectron2 import and that torch sees a GPU
# (SIMFORMER_BUNDLE_CPU_OK=1 accepts a machine without one, for a dry run). Prints the versions.
set -euo pipefail
BUNDLE="$(cd "${1:?usage: install_gpu_bundle.sh BUNDLE_DIR [VENV_DIR] [TREE_DIR]}" && pwd)"
VENV="${2:-/tmp/simformer-venv}"
TREE="${3:-/tmp/simformer-tree}"
PY_BOOT="${PYTHON:-python3}"
log() { echo "[install_gpu_bundle] $*"; }

[ -x "$VENV/bin/python" ] || "$PY_BOOT" -m venv --system-site-packages "$VENV"
log "installing $(ls "$BUNDLE"/*.whl | wc -l) wheels into $VENV (no index, no dependency resolution)"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-index "$BUNDLE"/*.whl
mkdir -p "$TREE"
tar -C "$TREE" -xzf "$BUNDLE/simformer-tree.tar.gz"
log "repository files in $TREE (commit $(cat "$BUNDLE/COMMIT" 2>/dev/null || echo unknown))"
"$VENV/bin/python" - <<'PYEOF'
import os, sys
import torch, detectron2, simformer  # noqa: F401
import pycocotools.mask, fvcore, yacs  # noqa: F401
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(f"[install_gpu_bundle] python {sys.version.split()[0]} | torch {torch.__version__} | detectron2 {detectron2.__version__} | GPU {gpu}")
if gpu is None and os.environ.get("SIMFORMER_BUNDLE_CPU_OK") != "1":
    sys.exit("[install_gpu_bundle] torch sees no CUDA device (set SIMFORMER_BUNDLE_CPU_OK=1 for a dry run)")
PYEOF
