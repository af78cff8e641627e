"""CLASSIFIER_REGISTRY: the one place to swap a per-pixel classification layer (SSA, CCS register here)."""
from detectron2.utils.registry import Registry

CLASSIFIER_REGISTRY = Registry("CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = """
Per-pixel classifiers: ``cls(cfg, in_channels, num_classes)`` through ``from_config``;
``forward(features (B, C, H, W), targets=None)`` returns ``(logits (B, K, H, W), aux_losses dict)``.
"""


def build_classifier(cfg, in_channels, num_classes):
    return CLASSIFIER_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME)(cfg, in_channels, num_classes)
