#!/usr/bin/env bash
# Set everything up (if not already done) and run the test suite.
#   bash tools/run_tests.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
