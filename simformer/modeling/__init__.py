"""Model components; importing this package fills the registries."""
from . import backbone, classifiers, pixel_decoder, transformer_decoder
from .criterion import SetCriterion
from .head import MaskFormerHead
from .matcher import HungarianMatcher
from .per_pixel_head import PerPixelBaselineHead

__all__ = ["SetCriterion", "MaskFormerHead", "HungarianMatcher", "PerPixelBaselineHead", "classifiers", "pixel_decoder", "transformer_decoder"]
