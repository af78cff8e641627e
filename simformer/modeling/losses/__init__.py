"""Pure-tensor loss functions (no config, no detectron2)."""
from .classification import weighted_cross_entropy
from .mask import (
    batch_dice_cost,
    batch_focal_dice_cost,
    batch_sigmoid_focal_cost,
    dice_loss,
    sigmoid_focal_loss,
)
from .pixel_contrast import group_ranks, pixel_contrast_loss, ring_buffer_slots, sample_anchors

__all__ = [
    "weighted_cross_entropy",
    "batch_dice_cost",
    "batch_focal_dice_cost",
    "batch_sigmoid_focal_cost",
    "dice_loss",
    "sigmoid_focal_loss",
    "group_ranks",
    "pixel_contrast_loss",
    "ring_buffer_slots",
    "sample_anchors",
]
