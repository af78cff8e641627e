"""simformer: weak-shot semantic segmentation on detectron2.

Importing the package applies the detectron2 version workarounds (``simformer.utils.d2compat``) and
fills every registry (meta-architecture, heads, pixel / transformer decoders, classifiers, mappers,
datasets).
"""
from .utils import d2compat

d2compat.apply()

from . import data, modeling  # noqa: E402  (registration side effects)
from .config import add_simformer_config  # noqa: E402
from .model import MaskFormer  # noqa: E402
from .simformer_model import SimFormer  # noqa: E402

__all__ = ["add_simformer_config", "MaskFormer", "SimFormer", "data", "modeling"]
__version__ = "0.1.0"
