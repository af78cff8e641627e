"""Semantic segmentation evaluation: confusion matrix, mIoU / fwIoU / mACC / pACC, base / novel mIoU, hIoU."""
from .confusion import confusion_matrix, harmonic_mean, segmentation_metrics, validate_groups
from .sem_seg_evaluator import SemSegEvaluator, format_metrics_table

__all__ = [
    "confusion_matrix",
    "segmentation_metrics",
    "validate_groups",
    "harmonic_mean",
    "SemSegEvaluator",
    "format_metrics_table",
]
