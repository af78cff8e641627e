"""Confusion matrix and semantic segmentation metrics (pure NumPy, no detectron2).

Conventions (those of detectron2's ``SemSegEvaluator``):

* the confusion matrix of ``K`` classes is ``(K+1, K+1)``; rows are predictions, columns are ground
  truth; ground-truth ``ignore_label`` pixels go to the extra last column ``K`` (the last row is
  always zero since predictions are in ``[0, K)``);
* per-class statistics use only the ``K x K`` real-class block;
* all metrics are percentages.
"""
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ["confusion_matrix", "segmentation_metrics", "validate_groups", "harmonic_mean"]


def _format_values(values: np.ndarray, limit: int = 10) -> str:
    """``[1, 2, 3]`` (at most ``limit`` values, then `` ...``) for error messages."""
    shown = [int(v) for v in values[:limit]]
    return str(shown) + (" ..." if len(values) > limit else "")


def confusion_matrix(pred, gt, num_classes: int, ignore_label: Optional[int] = 255) -> np.ndarray:
    """
    Args:
        pred: integer array (any shape, e.g. H x W) of predicted class ids in ``[0, K)``.
        gt: integer array of the same shape, ids in ``[0, K)`` or ``ignore_label``.
        num_classes: K.
        ignore_label: ground-truth id to ignore (``None``: no ignore id).

    Returns:
        np.ndarray: (K+1, K+1) int64, ``conf[p, g]`` = number of pixels predicted ``p`` with ground
        truth ``g``; ignored ground-truth pixels are counted in column K.
    """
    k = int(num_classes)
    if k <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    for name, arr in (("pred", pred), ("gt", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if ignore_label is not None and 0 <= ignore_label < k:
        raise ValueError(f"ignore_label={ignore_label} collides with a class id in [0, {k})")

    pred = pred.astype(np.int64, copy=False).ravel()
    gt = gt.astype(np.int64, copy=False).ravel()

    bad_pred = (pred < 0) | (pred >= k)
    if bad_pred.any():
        raise ValueError(f"pred values must be in [0, {k}); found {_format_values(np.unique(pred[bad_pred]))}")
    is_class = (gt >= 0) & (gt < k)
    is_ignore = gt == ignore_label if ignore_label is not None else np.zeros_like(is_class)
    bad_gt = ~(is_class | is_ignore)
    if bad_gt.any():
        raise ValueError(
            f"gt values must be in [0, {k}) or ignore_label={ignore_label}; "
            f"found {_format_values(np.unique(gt[bad_gt]))}"
        )

    gt = np.where(is_ignore, k, gt)
    counts = np.bincount(pred * (k + 1) + gt, minlength=(k + 1) ** 2)
    return counts.reshape(k + 1, k + 1).astype(np.int64, copy=False)


def validate_groups(groups: Optional[Mapping[str, Sequence[int]]], num_classes: int) -> Dict[str, np.ndarray]:
    """Check class groups: ids are integers in ``[0, K)``, unique, and no id is in two groups.

    Returns:
        dict[str, np.ndarray]: group name -> int64 array of class ids.
    """
    if not groups:
        return {}
    out = {}
    owner = {}
    for name, ids in groups.items():
        arr = np.asarray(list(ids))
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"group {name!r}: class ids must be a flat list of integers, got {ids!r}")
        arr = arr.astype(np.int64)
        bad = arr[(arr < 0) | (arr >= num_classes)]
        if bad.size:
            raise ValueError(f"group {name!r}: class ids out of range [0, {num_classes}): {_format_values(np.unique(bad))}")
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"group {name!r}: duplicated class ids {_format_values(uniq[counts > 1])}")
        for c in arr.tolist():
            if c in owner:
                raise ValueError(f"class id {c} is in both groups {owner[c]!r} and {name!r}")
            owner[c] = name
        out[name] = arr
    return out


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)``; 0 when ``a + b == 0``; NaN if either is NaN."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    if a + b == 0:
        return 0.0
    return float(2.0 * a * b / (a + b))


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-NaN entries, NaN (without a warning) when there is none."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def segmentation_metrics(
    conf: np.ndarray,
    class_names: Sequence[str],
    groups: Optional[Mapping[str, Sequence[int]]] = None,
) -> "OrderedDict[str, float]":
    """
    Args:
        conf: (K+1, K+1) confusion matrix from :func:`confusion_matrix` (rows: prediction).
        class_names: K names, used in the ``IoU-<name>`` / ``ACC-<name>`` keys.
        groups: optional ``{group name: [class ids]}``, e.g. ``{"base": [...], "novel": [...]}``.

    Returns:
        OrderedDict[str, float] (percent): ``mIoU, fwIoU, IoU-<name>..., mACC, pACC, ACC-<name>...``,
        then per group ``mIoU_<g>, mACC_<g>``, then ``hIoU`` when both "base" and "novel" exist.
        Undefined values are NaN.
    """
    conf = np.asarray(conf)
    k = len(class_names)
    if conf.shape != (k + 1, k + 1):
        raise ValueError(f"conf must have shape ({k + 1}, {k + 1}) for {k} class names, got {conf.shape}")
    if len(set(class_names)) != k:
        dup = sorted({n for n in class_names if list(class_names).count(n) > 1})
        raise ValueError(f"class_names must be unique (they name the IoU-/ACC- keys); duplicated: {dup}")
    group_ids = validate_groups(groups, k)

    block = conf[:k, :k].astype(np.float64)
    tp = np.diagonal(block).copy()
    pos_gt = block.sum(axis=0)
    pos_pred = block.sum(axis=1)
    has_gt = pos_gt > 0
    seen = (pos_gt + pos_pred) > 0

    iou = np.full(k, np.nan)
    acc = np.full(k, np.nan)
    union = pos_gt + pos_pred - tp
    iou[has_gt] = tp[has_gt] / union[has_gt]
    acc[has_gt] = tp[has_gt] / pos_gt[has_gt]
    total_gt = pos_gt.sum()

    res = OrderedDict()
    res["mIoU"] = 100 * _safe_div(iou[has_gt].sum(), seen.sum())
    res["fwIoU"] = 100 * (float((pos_gt[has_gt] / total_gt * iou[has_gt]).sum()) if total_gt > 0 else float("nan"))
    for name, v in zip(class_names, iou):
        res[f"IoU-{name}"] = 100 * float(v)
    res["mACC"] = 100 * _nanmean(acc)
    res["pACC"] = 100 * _safe_div(tp.sum(), total_gt)
    for name, v in zip(class_names, acc):
        res[f"ACC-{name}"] = 100 * float(v)
    for g, ids in group_ids.items():
        res[f"mIoU_{g}"] = 100 * _nanmean(iou[ids])
        res[f"mACC_{g}"] = 100 * _nanmean(acc[ids])
    if "base" in group_ids and "novel" in group_ids:
        res["hIoU"] = harmonic_mean(res["mIoU_base"], res["mIoU_novel"])
    return res
