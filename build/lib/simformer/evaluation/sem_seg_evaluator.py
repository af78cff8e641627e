"""Semantic segmentation evaluator with base / novel class groups (mIoU per group and hIoU)."""
import logging
import os
from collections import OrderedDict
from typing import Mapping, Optional

import numpy as np
import torch
from tabulate import tabulate

from simformer.utils import d2compat

d2compat.apply()  # detectron2 0.6 without C++ ops cannot import detectron2.data / .evaluation otherwise

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.evaluation.evaluator import DatasetEvaluator  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402

from ..data.image_io import read_label_file  # noqa: E402
from ..utils.atomic_io import atomic_write  # noqa: E402
from .confusion import boundary_counts, boundary_metrics, confusion_matrix, segmentation_metrics, validate_groups  # noqa: E402

__all__ = ["SemSegEvaluator", "format_metrics_table"]

_SUMMARY_KEYS = ("mIoU", "fwIoU", "mACC", "pACC")


def _unwrap(metrics: Mapping) -> Mapping:
    """Accept either the metrics dict or ``{"sem_seg": metrics}`` (what ``evaluate()`` returns)."""
    if "sem_seg" in metrics and isinstance(metrics["sem_seg"], Mapping):
        return metrics["sem_seg"]
    return metrics


def _group_names(metrics: Mapping):
    return [k[len("mIoU_"):] for k in metrics if k.startswith("mIoU_")]


def format_metrics_table(metrics: Mapping) -> str:
    """One-row table of ``mIoU, fwIoU, mACC, pACC`` then ``mIoU_<g>, mACC_<g>`` per group, ``hIoU``, and
    ``bIoU`` (with ``bIoU_<g>``) when the boundary metric was computed.

    Args:
        metrics: the ``"sem_seg"`` dict of :meth:`SemSegEvaluator.evaluate` (or the whole result).
    """
    metrics = _unwrap(metrics)
    keys = [k for k in _SUMMARY_KEYS if k in metrics]
    for g in _group_names(metrics):
        keys += [k for k in (f"mIoU_{g}", f"mACC_{g}") if k in metrics]
    if "hIoU" in metrics:
        keys.append("hIoU")
    if "bIoU" in metrics:
        keys += ["bIoU"] + [f"bIoU_{g}" for g in _group_names(metrics) if f"bIoU_{g}" in metrics]
    return tabulate([[metrics[k] for k in keys]], headers=keys, tablefmt="pipe", floatfmt=".2f", numalign="left")


class SemSegEvaluator(DatasetEvaluator):
    """
    Accumulates a (K+1) x (K+1) confusion matrix (rows: prediction, columns: ground truth, column K:
    ignored pixels) over ``(input, output)`` pairs and reports detectron2's semantic segmentation
    metrics (mIoU, fwIoU, mACC, pACC, per-class IoU / ACC), plus ``mIoU_base``, ``mIoU_novel`` and
    their harmonic mean ``hIoU`` when the dataset metadata has ``base_class_ids`` / ``novel_class_ids``.

    With ``boundary_tolerance=d`` it also reports boundary quality: ``bIoU`` (Boundary IoU at a d-pixel
    tolerance, at the original image resolution; see :mod:`simformer.evaluation.confusion`), ``bIoU-<name>``
    per class and ``bIoU_<g>`` per group, appended after the other keys.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
        boundary_tolerance: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: name of a dataset registered in ``MetadataCatalog``; its metadata gives
                ``stuff_classes``, ``ignore_label`` (default 255) and optionally ``base_class_ids`` /
                ``novel_class_ids`` (contiguous ids).
            distributed: gather the confusion matrices of all processes in :meth:`evaluate`.
            output_dir: where to save ``sem_seg_evaluation.pth`` and ``confusion_matrix.npy``.
            num_classes: K; defaults to ``len(stuff_classes)`` (must agree with it when both exist).
            ignore_label: overrides the metadata's ``ignore_label``.
            boundary_tolerance: d >= 1 (pixels) to also compute Boundary IoU; None = off (the metric keys
                are then exactly those of :func:`segmentation_metrics`).
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir

        meta = MetadataCatalog.get(dataset_name)
        class_names = meta.get("stuff_classes", None)
        if class_names is None:
            if num_classes is None:
                raise ValueError(f"Dataset {dataset_name!r} has no 'stuff_classes' metadata; pass num_classes")
            class_names = [str(i) for i in range(num_classes)]
        elif num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} differs from the {len(class_names)} stuff_classes of {dataset_name!r}"
            )
        self._class_names = list(class_names)
        self._num_classes = len(self._class_names)
        self._ignore_label = ignore_label if ignore_label is not None else meta.get("ignore_label", 255)

        groups = OrderedDict()
        for group, key in (("base", "base_class_ids"), ("novel", "novel_class_ids")):
            ids = meta.get(key, None)
            if ids is not None:
                groups[group] = [int(i) for i in ids]
        validate_groups(groups, self._num_classes)
        self._groups = groups
        if boundary_tolerance is not None and int(boundary_tolerance) < 1:
            raise ValueError(f"boundary_tolerance must be a positive number of pixels or None, got {boundary_tolerance}")
        self._boundary_tolerance = boundary_tolerance
        self.reset()

    @property
    def groups(self):
        """dict[str, list[int]]: class groups (``base`` / ``novel``) read from the metadata."""
        return dict(self._groups)

    def reset(self):
        k = self._num_classes
        self._conf = np.zeros((k + 1, k + 1), dtype=np.int64)
        self._boundary = np.zeros((3, k), dtype=np.int64) if self._boundary_tolerance else None

    def process(self, inputs, outputs):
        """
        Args:
            inputs: list of dicts with ``"sem_seg_file_name"`` (uint8 label PNG at original size).
            outputs: list of dicts with ``"sem_seg"``: K x H x W tensor of scores at original size.
        """
        for input, output in zip(inputs, outputs):
            if "sem_seg_file_name" not in input:
                raise KeyError(f"SemSegEvaluator needs 'sem_seg_file_name' in the inputs; got keys {sorted(input)}")
            file_name = input["sem_seg_file_name"]
            scores = output["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"output['sem_seg'] must be K x H x W with K={self._num_classes}, got {tuple(scores.shape)} "
                    f"for {file_name}"
                )
            pred = scores.argmax(dim=0).cpu().numpy()
            gt = read_label_file(file_name, what="ground-truth label")
            if pred.shape != gt.shape:
                raise ValueError(
                    f"Prediction size {pred.shape[0]}x{pred.shape[1]} (HxW) differs from the ground truth size "
                    f"{gt.shape[0]}x{gt.shape[1]} of {file_name}"
                )
            try:
                self._conf += confusion_matrix(pred, gt, self._num_classes, self._ignore_label)
                if self._boundary is not None:
                    self._boundary += boundary_counts(pred, gt, self._num_classes, self._ignore_label, self._boundary_tolerance)
            except ValueError as e:
                raise ValueError(f"{file_name}: {e}") from e

    def evaluate(self):
        """
        Returns:
            OrderedDict ``{"sem_seg": metrics}`` (see :func:`segmentation_metrics`) on the main
            process; ``None`` on the other processes when distributed.
        """
        if self._distributed:
            comm.synchronize()
            gathered = comm.all_gather((self._conf, self._boundary))
            if not comm.is_main_process():
                return None
            conf = np.sum(np.stack([c for c, _ in gathered]), axis=0)
            boundary = np.sum(np.stack([b for _, b in gathered]), axis=0) if self._boundary is not None else None
        else:
            conf = self._conf.copy()
            boundary = self._boundary.copy() if self._boundary is not None else None

        metrics = segmentation_metrics(conf, self._class_names, self._groups)
        if boundary is not None:
            metrics.update(boundary_metrics(boundary, self._class_names, self._groups))
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            atomic_write(os.path.join(self._output_dir, "sem_seg_evaluation.pth"), lambda f: torch.save(dict(metrics), f))
            atomic_write(os.path.join(self._output_dir, "confusion_matrix.npy"), lambda f: np.save(f, conf))

        self._logger.info(f"Semantic segmentation results on {self._dataset_name}:\n" + self._per_class_table(metrics))
        self._logger.info("\n" + format_metrics_table(metrics))
        if self._groups:
            summary = " | ".join(
                f"{k} {metrics[k]:.2f}" for k in ("mIoU", "mIoU_base", "mIoU_novel", "hIoU") if k in metrics
            )
            self._logger.info(summary)
        if boundary is not None:
            self._logger.info(f"Boundary IoU (tolerance {self._boundary_tolerance} px): {metrics['bIoU']:.2f}")
        return OrderedDict({"sem_seg": metrics})

    def _per_class_table(self, metrics) -> str:
        """Per-class IoU / ACC (/ bIoU) table, with a ``group`` column when groups exist."""
        group_of = {c: g for g, ids in self._groups.items() for c in ids}
        has_boundary = "bIoU" in metrics
        headers = ["id", "class", "IoU", "ACC"] + (["bIoU"] if has_boundary else []) + (["group"] if self._groups else [])
        rows = []
        for i, name in enumerate(self._class_names):
            row = [i, name, metrics[f"IoU-{name}"], metrics[f"ACC-{name}"]]
            if has_boundary:
                row.append(metrics[f"bIoU-{name}"])
            if self._groups:
                row.append(group_of.get(i, "-"))
            rows.append(row)
        return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f", numalign="left")
