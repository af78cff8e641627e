"""Pure-tensor loss functions (no config, no detectron2)."""
from .classification import weighted_cross_entropy
from .mask import (
    batch_dice_cost,
    batch_sigmoid_focal_cost,
    dice_loss,
    sigmoid_focal_loss,
)

__all__ = [
    "weighted_cross_entropy",
    "batch_dice_cost",
    "batch_sigmoid_focal_cost",
    "dice_loss",
    "sigmoid_focal_loss",
]
