"""Classification loss of the mask-classification model."""
import torch.nn.functional as F

__all__ = ["weighted_cross_entropy"]


def weighted_cross_entropy(logits, target_classes, class_weight):
    """Softmax CE over K+1 classes with per-class weights (no-object down-weighted), weighted mean.

    Args:
        logits: (B, Q, K+1) class logits.
        target_classes: (B, Q) int64, matched class or K ("no object") for unmatched queries.
        class_weight: (K+1,) weights; the loss is sum_i w_{y_i} CE_i / sum_i w_{y_i}.
    Returns:
        scalar tensor.
    """
    return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=class_weight)
