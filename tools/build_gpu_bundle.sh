#!/usr/bin/env bash
# Build the wheel bundle that the GPU check carries to the device machine (issue 22).
#
#   bash tools/build_gpu_bundle.sh [OUT_DIR]        # default: gpu_bundle/ (git-ignored)
#
# The device image has Python 3.12 with torch, torchvision, timm, transformers, onnxruntime, numpy, scipy,
# opencv and Pillow, but no detectron2, fvcore, iopath, yacs or pycocotools, and no package registry. This
# script collects, for CPython 3.12 on manylinux x86_64:
#   * binary wheels from the registry (pycocotools, matplotlib and its compiled deps, PyYAML);
#   * pure-Python wheels (fvcore, iopath, yacs, omegaconf, pytest, hypothesis, ...), built here from the
#     source distribution where the registry has no wheel (fvcore, antlr4-python3-runtime);
#   * detectron2 0.6 as a pure-Python wheel: the registry's source distribution (pb1-detectron2) built
#     without its C++ ops, tools/d2_c_stub.py as detectron2._C (as tools/setup_env.sh does);
#   * simformer itself (a wheel of this checkout) and the repository files the check runs
#     (benchmarks/, configs/, tests/, tools/, pytest.ini) as simformer-tree.tar.gz.
# tools/install_gpu_bundle.sh installs them there with --no-deps --no-index. The versions are those of
# tools/setup_env.sh's environment, so the GPU runs the code the CPU tests ran. Size limit: 60 MiB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/gpu_bundle}" && cd "${1:-$ROOT/gpu_bundle}" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PIP_ARGS=(--isolated --disable-pip-version-check --timeout 120)
[ -n "${PIP_CERT:-}" ] && PIP_ARGS+=(--cert "$PIP_CERT")
[ -n "${PIP_INDEX_URL:-}" ] && PIP_ARGS+=(--index-url "$PIP_INDEX_URL")
log() { echo "[gpu_bundle] $*"; }

# compiled packages: wheels for the device's interpreter (CPython 3.12, manylinux x86_64)
BINARY=(pycocotools==2.0.11 hypothesis==6.170.27 matplotlib==3.11.2 contourpy==1.3.3 kiwisolver==1.5.1 fonttools==4.69.1 PyYAML==6.0.4)
# pure Python: any wheel (py3-none-any), built from the sdist when the registry has none
PURE=(fvcore==0.1.5.post20221221 iopath==0.1.9 yacs==0.1.8 termcolor==3.3.0 tabulate==0.10.0 cloudpickle==3.1.3
      portalocker==4.4.2 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 hydra-core==1.3.8 tqdm==4.70.1 cycler==0.12.1
      pyparsing==3.3.3 python-dateutil==4.0.0 six==1.17.0 packaging==26.4
      pytest==9.2.0 pluggy==1.7.0 Pygments==2.21.0 iniconfig==2.3.1 pytest-timeout==2.4.0 sortedcontainers==2.4.0)

rm -f "$OUT"/*.whl "$OUT"/*.tar.gz
log "binary wheels for CPython 3.12 / manylinux x86_64"
"$PY" -m pip download "${PIP_ARGS[@]}" -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$OUT" "${BINARY[@]}"
log "pure-Python wheels (built from source where needed)"
"$PY" -m pip wheel "${PIP_ARGS[@]}" -q --no-deps -w "$OUT" "${PURE[@]}"

log "detectron2 0.6 without C++ ops"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK" <<'PYEOF'
"""Fetch and unpack pb1-detectron2 0.6's source distribution (pip cannot: its setup.py builds C++)."""
import hashlib, os, re, ssl, sys, tarfile, urllib.request
work = sys.argv[1]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
html = urllib.request.urlopen(f"{index}/pb1-detectron2/", timeout=60, context=ctx).read().decode()
links = re.findall(r'href="([^"]+/pb1-detectron2-0\.6\.tar\.gz)#sha256=([0-9a-f]+)"', html)
if not links:
    sys.exit(f"[gpu_bundle] pb1-detectron2==0.6: no source distribution at {index}/pb1-detectron2/")
url, sha = links[0]
data = urllib.request.urlopen(url, timeout=300, context=ctx).read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"[gpu_bundle] {url}: sha256 mismatch")
path = os.path.join(work, "sdist.tar.gz")
open(path, "wb").write(data)
with tarfile.open(path) as tf:
    tf.extractall(work, filter="data")
PYEOF
SRC="$(ls -d "$WORK"/pb1-detectron2-*/ | head -1)"
sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$SRC/setup.py"
grep -q 'ext_modules=\[\],' "$SRC/setup.py" || { echo "[gpu_bundle] could not patch $SRC/setup.py"; exit 1; }
cp "$ROOT/tools/d2_c_stub.py" "$SRC/detectron2/_C.py"
"$PY" -m pip wheel "${PIP_ARGS[@]}" -q --no-deps --no-build-isolation -w "$OUT" "$SRC"

log "simformer (this checkout) and the repository files the check runs"
mkdir -p "$WORK/simformer-src"  # a clean copy: setuptools' build/ folder would keep files deleted since
cp -r "$ROOT/setup.py" "$ROOT/simformer" "$ROOT/ssa_adapter" "$WORK/simformer-src/"
find "$WORK/simformer-src" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel "${PIP_ARGS[@]}" -q --no-deps --no-build-isolation -w "$OUT" "$WORK/simformer-src"
tar -C "$ROOT" -czf "$OUT/simformer-tree.tar.gz" --exclude='__pycache__' --exclude='*.pyc' \
  benchmarks configs tests tools pytest.ini setup.py train_net.py
(cd "$ROOT" && git rev-parse HEAD 2>/dev/null || echo unknown) > "$OUT/COMMIT"
cp "$ROOT/benchmarks/gpu_check.sh" "$OUT/gpu_check.sh"

for w in "$OUT"/*.whl; do
  case "$(basename "$w")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*cp312*manylinux*x86_64*.whl) ;;
    *) echo "[gpu_bundle] $(basename "$w") does not install on CPython 3.12 / x86_64"; exit 1 ;;
  esac
done
SIZE_KIB=$(du -sk "$OUT" | cut -f1)
log "$(ls "$OUT"/*.whl | wc -l) wheels + tree in $OUT: $((SIZE_KIB / 1024)) MiB"
[ "$SIZE_KIB" -le $((60 * 1024)) ] || { echo "[gpu_bundle] bundle is over 60 MiB"; exit 1; }
