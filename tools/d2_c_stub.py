"""Stand-in for detectron2's compiled extension ``detectron2._C``.

``tools/setup_env.sh`` installs this file as ``detectron2/_C.py`` only when it falls back to detectron2 0.6
from the registry's source distribution, which is built without its C++/CUDA ops. ``detectron2.layers``
imports ``_C`` at import time and ``collect_env`` asks it for compiler / CUDA versions; semantic
segmentation uses none of the ops (deformable conv, ROIAlign, NMS, ...), and calling one raises a clear
error instead of an ImportError at import time.
"""

SIMFORMER_STUB = True


def get_compiler_version():
    return "none (detectron2 installed without C++ ops)"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    raise AttributeError(
        f"detectron2._C.{name} is unavailable: detectron2 was installed without its C++/CUDA ops "
        "(tools/setup_env.sh fallback). Install upstream detectron2 to use this op."
    )
