"""simformer: weak-shot semantic segmentation on detectron2.

Importing the package applies the detectron2 version workarounds (``simformer.utils.d2compat``) and
fills every registry (meta-architecture, heads, pixel / transformer decoders, classifiers, mappers,
datasets). Without detectron2 installed (a deployment machine running an exported ONNX model) the
import succeeds and only the detectron2-free parts work: ``simformer.deploy`` (ONNX prediction),
``simformer.data.image_io``, ``simformer.utils.overlay``.
"""
__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ModuleNotFoundError as _e:  # only a missing detectron2 itself is tolerated, not a broken install
    if _e.name != "detectron2":
        raise
    HAS_DETECTRON2 = False
    __all__ = []
else:
    HAS_DETECTRON2 = True
    from .utils import d2compat

    d2compat.apply()

    from . import data, modeling  # noqa: E402  (registration side effects)
    from .config import add_simformer_config  # noqa: E402
    from .model import MaskFormer  # noqa: E402
    from .simformer_model import SimFormer  # noqa: E402

    __all__ = ["add_simformer_config", "MaskFormer", "SimFormer", "data", "modeling"]
