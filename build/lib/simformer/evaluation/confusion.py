"""Confusion matrix and semantic segmentation metrics (pure NumPy, no detectron2).

Conventions (those of detectron2's ``SemSegEvaluator``):

* the confusion matrix of ``K`` classes is ``(K+1, K+1)``; rows are predictions, columns are ground
  truth; ground-truth ``ignore_label`` pixels go to the extra last column ``K`` (the last row is
  always zero since predictions are in ``[0, K)``);
* per-class statistics use only the ``K x K`` real-class block;
* all metrics are percentages.

Boundary quality (:func:`boundary_counts`, :func:`boundary_metrics`): Boundary IoU (Cheng et al., CVPR
2021) at a fixed pixel tolerance d. The boundary region of class k in a label map is the set of pixels
labelled k that have a differently labelled pixel within chessboard distance d (a (2d+1) x (2d+1)
window, clipped at the image border: the image frame is not a contour). Per class,
``bIoU_k = |G_k & P_k| / |G_k | P_k|`` for the boundary regions G_k of the ground truth and P_k of the
prediction, with intersections and unions summed over the dataset. The ignore label counts as a label
when finding ground-truth contours (a class <-> ignore transition is a contour of the class), but
pixels whose ground truth is ignored are never counted.
"""
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "confusion_matrix",
    "segmentation_metrics",
    "validate_groups",
    "harmonic_mean",
    "label_boundary",
    "boundary_counts",
    "boundary_metrics",
]


def _format_values(values: np.ndarray, limit: int = 10) -> str:
    """``[1, 2, 3]`` (at most ``limit`` values, then `` ...``) for error messages."""
    shown = [int(v) for v in values[:limit]]
    return str(shown) + (" ..." if len(values) > limit else "")


def _check_labels(pred, gt, num_classes: int, ignore_label: Optional[int]):
    """Validate a prediction / ground-truth pair; returns ``(pred, gt, is_class, is_ignore)`` as int64 /
    bool arrays of the input shape (see :func:`confusion_matrix` for the accepted values)."""
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

    pred = pred.astype(np.int64, copy=False)
    gt = gt.astype(np.int64, copy=False)

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
    return pred, gt, is_class, is_ignore


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
    pred, gt, _, is_ignore = _check_labels(pred, gt, k, ignore_label)
    gt = np.where(is_ignore, k, gt).ravel()
    counts = np.bincount(pred.ravel() * (k + 1) + gt, minlength=(k + 1) ** 2)
    return counts.reshape(k + 1, k + 1).astype(np.int64, copy=False)


def _window_extreme(a: np.ndarray, radius: int, reduce) -> np.ndarray:
    """``reduce`` (np.max / np.min) over the (2r+1) x (2r+1) window of every pixel, clipped at the border.

    Separable: one sliding window per axis. Edge padding repeats border pixels, which are already inside
    every clipped window, so it is the same as ignoring out-of-image pixels.
    """
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(a, pad, mode="edge"), 2 * radius + 1, axis=axis)
        a = reduce(windows, axis=-1)
    return a


def label_boundary(label, tolerance: int) -> np.ndarray:
    """Pixels of a label map with a differently labelled pixel within chessboard distance ``tolerance``.

    Args:
        label: (H, W) integer label map (every value is a label, the ignore id included).
        tolerance: d >= 1, in pixels.
    Returns:
        (H, W) bool.
    """
    if int(tolerance) < 1:
        raise ValueError(f"boundary tolerance must be a positive number of pixels, got {tolerance}")
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be an H x W map, got shape {label.shape}")
    return _window_extreme(label, int(tolerance), np.max) != _window_extreme(label, int(tolerance), np.min)


def boundary_counts(pred, gt, num_classes: int, ignore_label: Optional[int] = 255, tolerance: int = 3) -> np.ndarray:
    """Per-class boundary-region statistics of one image (module docstring: Boundary IoU at ``tolerance``).

    Args:
        pred: (H, W) predicted ids in ``[0, K)``; gt: (H, W) ids in ``[0, K)`` or ``ignore_label``.
        num_classes: K. tolerance: d in pixels (>= 1).
    Returns:
        np.ndarray: (3, K) int64, rows ``|G_k & P_k|``, ``|G_k|``, ``|P_k|`` (pixels with ignored ground
        truth excluded); sum them over images and pass the total to :func:`boundary_metrics`.
    """
    k = int(num_classes)
    pred, gt, is_class, _ = _check_labels(pred, gt, k, ignore_label)
    if pred.ndim != 2:
        raise ValueError(f"pred and gt must be H x W label maps, got shape {pred.shape}")
    gt_region = is_class & label_boundary(gt, tolerance)
    pred_region = is_class & label_boundary(pred, tolerance)
    both = gt_region & pred_region & (gt == pred)
    return np.stack(
        [
            np.bincount(gt[both], minlength=k),
            np.bincount(gt[gt_region], minlength=k),
            np.bincount(pred[pred_region], minlength=k),
        ]
    ).astype(np.int64, copy=False)


def boundary_metrics(
    counts: np.ndarray,
    class_names: Sequence[str],
    groups: Optional[Mapping[str, Sequence[int]]] = None,
) -> "OrderedDict[str, float]":
    """
    Args:
        counts: (3, K) summed :func:`boundary_counts`.
        class_names: K names, used in the ``bIoU-<name>`` keys.
        groups: optional ``{group name: [class ids]}``.

    Returns:
        OrderedDict[str, float] (percent): ``bIoU`` (mean over the classes with a non-empty boundary
        union in ground truth or prediction, like ``mIoU``), ``bIoU-<name>...`` (NaN when the union is
        empty), then ``bIoU_<g>`` per group.
    """
    counts = np.asarray(counts)
    k = len(class_names)
    if counts.shape != (3, k):
        raise ValueError(f"boundary counts must have shape (3, {k}) for {k} class names, got {counts.shape}")
    group_ids = validate_groups(groups, k)
    inter, gt_area, pred_area = counts.astype(np.float64)
    union = gt_area + pred_area - inter
    biou = np.full(k, np.nan)
    biou[union > 0] = inter[union > 0] / union[union > 0]

    res = OrderedDict()
    res["bIoU"] = 100 * _nanmean(biou)
    for name, v in zip(class_names, biou):
        res[f"bIoU-{name}"] = 100 * float(v)
    for g, ids in group_ids.items():
        res[f"bIoU_{g}"] = 100 * _nanmean(biou[ids])
    return res


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
