"""Per-pixel baseline head: the same pixel decoder, then a per-pixel classifier chosen by name, CE loss.

Used with detectron2's ``SemanticSegmentor`` meta-architecture. ``MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME``
picks the classifier: "LinearClassifier" (the baseline 1x1 conv) or "SSAClassifier" (SSA-Seg's adaptive
classifier, which needs the ground truth in training for its teacher and distillation losses)."""
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from .classifiers import build_classifier
from .pixel_decoder import build_pixel_decoder

__all__ = ["PerPixelBaselineHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class PerPixelBaselineHead(nn.Module):
    """features -> logits (B, K, H/4, W/4) -> upsampled to the padded input size.

    In training the classifier gets the targets (B, H, W) and returns its own already-weighted losses
    (e.g. SSA's ``loss_ssa_*``), which are added to the loss dict: ``(None, {"loss_sem_seg": CE *
    loss_weight, **classifier losses})``. Logits are upsampled bilinearly with align_corners=False in
    training and inference alike. Inference returns ``(logits (B, K, H, W), {})`` as detectron2's
    ``SemanticSegmentor`` expects.
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, pixel_decoder: nn.Module, classifier: nn.Module, loss_weight: float = 1.0, ignore_value: int = 255, common_stride: int = 4):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.classifier = classifier
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        self.common_stride = common_stride

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "classifier": build_classifier(cfg, head.MASK_DIM, head.NUM_CLASSES),
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
            "common_stride": head.COMMON_STRIDE,
        }

    def layers(self, features, targets=None):
        mask_features, _, _ = self.pixel_decoder.forward_features(features)
        return self.classifier(mask_features, targets)

    def forward(self, features, targets=None):
        logits, aux_losses = self.layers(features, targets if self.training else None)
        if self.training:
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, targets, reduction="mean", ignore_index=self.ignore_value)
            return None, {"loss_sem_seg": loss * self.loss_weight, **aux_losses}
        return F.interpolate(logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False), {}
