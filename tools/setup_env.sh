#!/usr/bin/env bash
# Set up the project-local virtual environment (.venv) on a fresh machine, or reuse it when complete.
#
#   bash tools/setup_env.sh          # idempotent; prints what it does
#
# Order of installation:
#   1. torch==2.13.0 + torchvision==0.28.0 from the package registry.  pip is run with --isolated so a
#      machine-wide pip config cannot substitute a local "+cpu" torch wheel that torchvision cannot
#      import next to (see DEVELOPERS notes in README "Install").  PIP_CERT / PIP_INDEX_URL are honoured.
#   2. detectron2: an importable detectron2 is used as is; else upstream from git (short timeout);
#      else detectron2 0.6 from the registry's source distribution `pb1-detectron2==0.6`, installed
#      WITHOUT its C++ ops (incl. its projects/ packages: deeplab, point_rend); tools/d2_c_stub.py takes
#      the place of the compiled detectron2._C.  The runtime workarounds that 0.6 needs with current
#      NumPy / Pillow / PyTorch live in simformer/utils/d2compat.py.
#   3. this project in editable mode with the `dev` extra (pytest, hypothesis, ...).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SIMFORMER_VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"
TORCHVISION_SPEC="torchvision==0.28.0"
D2_GIT="git+https://github.com/facebookresearch/detectron2.git"
D2_SDIST="pb1-detectron2==0.6"
GIT_TIMEOUT="${SIMFORMER_GIT_TIMEOUT:-60}"

log() { echo "[setup_env] $*"; }

# A stamp of everything that decides the environment's content: when it matches, set-up is skipped.
STAMP_SRC="$(cat "$ROOT/setup.py" "$ROOT/tools/setup_env.sh" | sha1sum | cut -d' ' -f1)"
STAMP_FILE="$VENV/.simformer-env-stamp"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP_SRC" ] \
   && "$VENV/bin/python" -c "import torch, torchvision, detectron2, simformer" >/dev/null 2>&1; then
  log "environment $VENV is complete; reusing it"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"

PIP_ARGS=(--isolated --disable-pip-version-check --timeout 120)
[ -n "${PIP_CERT:-}" ] && PIP_ARGS+=(--cert "$PIP_CERT")
[ -n "${PIP_INDEX_URL:-}" ] && PIP_ARGS+=(--index-url "$PIP_INDEX_URL")
pip_install() { "$PY" -m pip install "${PIP_ARGS[@]}" "$@"; }

# --- 1. torch / torchvision -------------------------------------------------------------------
if "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "torch/torchvision already importable: $("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)')"
else
  log "installing $TORCH_SPEC $TORCHVISION_SPEC (CUDA builds from the registry; they run on CPU too)"
  pip_install -q --upgrade pip
  pip_install -q "$TORCH_SPEC" "$TORCHVISION_SPEC"
  "$PY" -c "import torch, torchvision; print('[setup_env] torch', torch.__version__, 'torchvision', torchvision.__version__)"
fi

# --- 2. detectron2 -------------------------------------------------------------------------------
# Runtime dependencies of detectron2 0.6 (its setup.py pins black==21.4b2, which we skip).
D2_DEPS=("Pillow<10" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" tabulate cloudpickle
         "tqdm>4.29.0" tensorboard "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "omegaconf>=2.1" "hydra-core>=1.1")

if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  log "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
else
  installed=0
  if command -v git >/dev/null 2>&1; then
    log "trying upstream detectron2 from git (timeout ${GIT_TIMEOUT}s)"
    if timeout "$GIT_TIMEOUT" git ls-remote --exit-code https://github.com/facebookresearch/detectron2.git HEAD >/dev/null 2>&1 \
       && pip_install --no-build-isolation "$D2_GIT"; then
      installed=1
    else
      log "upstream git install unavailable; falling back to $D2_SDIST without C++ ops"
    fi
  fi
  if [ "$installed" = 0 ]; then
    pip_install -q "${D2_DEPS[@]}"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    "$PY" - "$WORK" "$D2_SDIST" <<'PYEOF'
"""Download the source distribution of pb1-detectron2 from the simple index (pip itself cannot, because
`pip download` runs the sdist's setup.py, which insists on building the C++ extension)."""
import hashlib, os, re, ssl, sys, tarfile, urllib.request
work, spec = sys.argv[1], sys.argv[2]
name, version = spec.split("==")
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
html = urllib.request.urlopen(f"{index}/{name}/", timeout=60, context=ctx).read().decode()
links = re.findall(r'href="([^"]+/' + re.escape(name) + "-" + re.escape(version) + r'\.tar\.gz)#sha256=([0-9a-f]+)"', html)
if not links:
    sys.exit(f"[setup_env] {spec}: no source distribution found at {index}/{name}/")
url, sha = links[0]
data = urllib.request.urlopen(url, timeout=300, context=ctx).read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"[setup_env] {url}: sha256 mismatch")
path = os.path.join(work, "sdist.tar.gz")
open(path, "wb").write(data)
with tarfile.open(path) as tf:
    tf.extractall(work, filter="data")
PYEOF
    SRC="$(ls -d "$WORK"/pb1-detectron2-*/ | head -1)"
    # Build without the C++/CUDA extension: the ops it holds (deformable conv, ROIAlign, NMS, ...) are
    # not used by semantic segmentation; a pure-Python stand-in module takes the name detectron2._C.
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$SRC/setup.py"
    cp "$ROOT/tools/d2_c_stub.py" "$SRC/detectron2/_C.py"
    grep -q 'ext_modules=\[\],' "$SRC/setup.py" || { echo "[setup_env] could not patch $SRC/setup.py"; exit 1; }
    log "installing detectron2 0.6 (pure Python, with projects deeplab/point_rend)"
    pip_install -q --no-deps --no-build-isolation "$SRC"
  fi
fi

# --- 3. this project -----------------------------------------------------------------------------
log "installing simformer (editable) with dev extras"
pip_install -q -e "$ROOT[dev]"
"$PY" -c "import simformer, detectron2, torch; print('[setup_env] ready: detectron2', detectron2.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
echo "$STAMP_SRC" > "$STAMP_FILE"
