"""CLASSIFIER_REGISTRY: the one place to swap a per-pixel classification layer (linear, SSA, CCS register here)."""
import torch
from detectron2.utils.registry import Registry

__all__ = ["CLASSIFIER_REGISTRY", "build_classifier", "PrototypeSlot", "prototype_logits"]

CLASSIFIER_REGISTRY = Registry("CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = """
Per-pixel classifiers: ``cls(cfg, in_channels, num_classes)`` through ``from_config``;
``forward(features (B, C, H, W), targets=None, prototypes=None)`` returns ``(logits (B, K, H, W), aux_losses dict)``.
``prototypes`` (B, K, C): per-image class weights that replace the classifier's own ``conv.weight`` (the
pixel classification layer of the mask-classification head passes them); ``expect_prototypes()`` is called
once when the classifier is placed there, so it freezes what it then no longer uses. Every registered
classifier works in both slots: the per-pixel head (no prototypes) and the pixel classification layer.
"""


def build_classifier(cfg, in_channels, num_classes):
    return CLASSIFIER_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME)(cfg, in_channels, num_classes)


class PrototypeSlot:
    """Mixin of a classifier whose class weights are a 1x1 ``conv`` (K, C): in the pixel classification
    layer, per-image prototypes replace ``conv.weight`` (its bias is still used), so the weight is frozen and
    DistributedDataParallel does not wait for its gradient."""

    def expect_prototypes(self):
        self.conv.weight.requires_grad_(False)


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """features (B, C, H, W), prototypes (B, K, C), bias (K,) -> (B, K, H, W) dot-product logits."""
    b, c = features.shape[:2]
    if prototypes.dim() != 3 or prototypes.shape[0] != b or prototypes.shape[2] != c or prototypes.shape[1] != bias.numel():
        raise ValueError(f"prototypes must be (B, K, C) = {(b, bias.numel(), c)} (K = MODEL.SEM_SEG_HEAD.NUM_CLASSES), got {tuple(prototypes.shape)}")
    return torch.einsum("bkc,bchw->bkhw", prototypes.to(features.dtype), features) + bias.to(features.dtype)[None, :, None, None]
