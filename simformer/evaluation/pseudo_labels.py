"""Pseudo-labels for retraining (spec §5.4): a ``DatasetEvaluator`` run on the *training* split.

For each image, starting from an all-ignore map:
  1. pixels predicted as a novel class named by the image-level labels (``novel_tags``) get that class;
  2. base pixels of the ground truth overwrite them (base pixels always keep their label);
  3. everything else stays ignore (predicted absent novel classes, predicted base without base GT).
The PNGs are written (atomically) to ``output_dir/<basename of sem_seg_file_name>``, exactly where the
retraining mapper reads them (``INPUT.WEAKSHOT.PSEUDO_LABEL_DIR``). When the label files hold the novel
pixels (simulated weak-shot data), the quality of the pseudo-labels against them is reported too.
"""
import json
import logging
import os
import time
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

from ..data.image_io import read_label_file
from ..utils.atomic_io import atomic_write
from .confusion import confusion_matrix, segmentation_metrics

__all__ = ["make_pseudo_label", "pseudo_label_path", "PseudoLabelWriter", "SUMMARY_FILE"]

SUMMARY_FILE = "pseudo_labels.json"


def pseudo_label_path(folder: str, sem_seg_file_name: str) -> str:
    """Where the pseudo-label of an image lives: ``<folder>/<basename of its label file>`` (the writer
    writes there, the retraining mapper reads there)."""
    return os.path.join(folder, os.path.basename(sem_seg_file_name))


def make_pseudo_label(pred: np.ndarray, gt: np.ndarray, novel_tags, is_base: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """pred (H, W) predicted ids, gt (H, W) label ids (may hold novel ids or ignore), novel_tags: the
    image's novel class ids, is_base: bool lookup over label values -> (H, W) uint8 pseudo-label."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and label {gt.shape} differ in size")
    out = np.full(gt.shape, ignore_label, dtype=np.uint8)
    tags = np.asarray(sorted(set(int(c) for c in novel_tags)), dtype=np.int64)
    if tags.size:
        keep = np.isin(pred, tags)
        out[keep] = pred[keep]
    base = is_base[gt]
    out[base] = gt[base]
    return out


class PseudoLabelWriter(DatasetEvaluator):
    """Writes a pseudo-label PNG per image of a weak-shot training dataset and reports their quality.

    Needs the dataset's metadata ``base_class_ids`` / ``novel_class_ids`` and each input's
    ``novel_tags`` (image-level labels) and ``sem_seg_file_name``. ``evaluate`` returns
    ``{"pseudo_labels": {num_images, labelled_fraction, novel_fraction, [quality metrics]}}`` and writes
    ``pseudo_labels.json`` next to the PNGs.
    """

    def __init__(self, dataset_name: str, output_dir: str, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        for key in ("base_class_ids", "novel_class_ids", "stuff_classes"):
            if meta.get(key, None) is None:
                raise KeyError(f"PseudoLabelWriter: dataset {dataset_name!r} has no metadata {key!r} (register it as a weak-shot dataset)")
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore = int(meta.get("ignore_label", 255))
        if self._num_classes > 255 or not 0 <= self._ignore <= 255:
            raise ValueError(f"PseudoLabelWriter writes uint8 PNGs: needs at most 255 classes and an ignore value in [0, 255] ({dataset_name!r})")
        self._base = [int(c) for c in meta.base_class_ids]
        self._novel = [int(c) for c in meta.novel_class_ids]
        self._is_base = np.zeros(max(self._num_classes, self._ignore) + 1, dtype=bool)
        self._is_base[self._base] = True
        self._is_novel = np.zeros_like(self._is_base)
        self._is_novel[self._novel] = True
        os.makedirs(output_dir, exist_ok=True)
        self.reset()

    def reset(self):
        k = self._num_classes
        self._conf = np.zeros((k + 1, k + 1), dtype=np.int64)
        self._counts = np.zeros(4, dtype=np.int64)  # images, pixels, labelled pixels, novel pixels
        self._gt_has_novel = False
        self._start = time.perf_counter()

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            for key in ("sem_seg_file_name", "novel_tags"):
                if key not in inp:
                    raise KeyError(f"PseudoLabelWriter: input {inp.get('file_name', '?')} has no {key!r} (register the training split as a weak-shot dataset)")
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            gt = read_label_file(inp["sem_seg_file_name"])
            bad = [c for c in inp["novel_tags"] if not 0 <= int(c) < self._num_classes or not self._is_novel[int(c)]]
            if bad:
                raise ValueError(f"{inp['file_name']}: novel_tags {bad} are not novel class ids of {self._dataset_name!r}")
            label = make_pseudo_label(pred, gt, inp["novel_tags"], self._is_base, self._ignore)
            atomic_write(pseudo_label_path(self._output_dir, inp["sem_seg_file_name"]), lambda f, a=label: Image.fromarray(a).save(f, format="PNG"))
            labelled = label != self._ignore
            self._counts += [1, label.size, int(labelled.sum()), int(self._is_novel[label[labelled]].sum())]
            gt_novel = self._is_novel[np.where(gt == self._ignore, 0, gt)] & (gt != self._ignore)
            self._gt_has_novel |= bool(gt_novel.any())
            # quality against the label file, on the pixels the pseudo-label labels
            self._conf += confusion_matrix(np.where(labelled, label, 0)[labelled], gt[labelled], self._num_classes, self._ignore)
        done = int(self._counts[0])
        if done % 100 == 0:
            self._logger.info(f"[PseudoLabelWriter] {done} images written to {self._output_dir}")

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            confs, counts, has_novel = comm.all_gather(self._conf), comm.all_gather(self._counts), comm.all_gather(self._gt_has_novel)
            if not comm.is_main_process():
                return None
            conf, count, gt_has_novel = np.sum(confs, axis=0), np.sum(counts, axis=0), any(has_novel)
        else:
            conf, count, gt_has_novel = self._conf, self._counts, self._gt_has_novel
        images, pixels, labelled, novel = (int(v) for v in count)
        result = OrderedDict(
            num_images=images,
            labelled_fraction=100.0 * labelled / max(pixels, 1),
            novel_fraction=100.0 * novel / max(pixels, 1),
            seconds=time.perf_counter() - self._start,
        )
        if gt_has_novel:  # full labels available (simulated weak-shot data): precision of the pseudo-labels
            metrics = segmentation_metrics(conf, self._class_names, {"base": self._base, "novel": self._novel})
            result.update({f"quality_{k}": metrics[k] for k in ("mIoU", "mIoU_base", "mIoU_novel", "pACC")})
        atomic_write(os.path.join(self._output_dir, SUMMARY_FILE), lambda f: json.dump(dict(result, dataset=self._dataset_name), f, indent=1), mode="w")
        self._logger.info(
            f"[PseudoLabelWriter] {images} pseudo-labels of {self._dataset_name} in {self._output_dir}: "
            f"{result['labelled_fraction']:.1f}% of pixels labelled, {result['novel_fraction']:.1f}% novel"
            + (f"; quality vs. full labels: mIoU {result['quality_mIoU']:.1f}, novel {result['quality_mIoU_novel']:.1f}" if gt_has_novel else "")
        )
        return OrderedDict(pseudo_labels=result)
