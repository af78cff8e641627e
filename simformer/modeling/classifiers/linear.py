"""The default classification layer: a 1x1 convolution."""
import torch.nn as nn
from detectron2.config import configurable

from .build import CLASSIFIER_REGISTRY, PrototypeSlot, prototype_logits

__all__ = ["LinearClassifier"]


@CLASSIFIER_REGISTRY.register()
class LinearClassifier(PrototypeSlot, nn.Module):
    """(B, C, H, W) -> (B, K, H, W) logits with a 1x1 conv (or per-image prototypes (B, K, C) in its
    place, plus the conv's bias); no auxiliary losses."""

    @configurable
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, 0, 0.001)
        nn.init.constant_(self.conv.bias, 0)

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes):
        return {"in_channels": in_channels, "num_classes": num_classes}

    def forward(self, features, targets=None, prototypes=None):
        if prototypes is None:
            return self.conv(features), {}
        return prototype_logits(features, prototypes, self.conv.bias), {}
