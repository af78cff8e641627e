"""Prediction overlays as PNG: image | ground truth | prediction, with a legend of the classes shown."""
import logging
import os
from typing import List, Optional

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils

from ..data.dataset_mappers.sem_seg_mapper import SemSegTestMapper

__all__ = ["class_colors", "colorize", "overlay_panel", "write_overlays"]

logger = logging.getLogger(__name__)


def class_colors(num_classes: int, metadata=None) -> np.ndarray:
    """(K, 3) uint8 RGB colours: the metadata's ``stuff_colors`` when present, else a fixed palette."""
    colors = metadata.get("stuff_colors", None) if metadata is not None else None
    if colors is not None and len(colors) >= num_classes:
        return np.asarray(colors[:num_classes], dtype=np.uint8)
    rng = np.random.RandomState(1234)
    return rng.randint(40, 256, size=(num_classes, 3)).astype(np.uint8)


def colorize(label: np.ndarray, colors: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) RGB; ignore pixels black."""
    out = np.zeros(label.shape + (3,), dtype=np.uint8)
    valid = (label != ignore_label) & (label < len(colors))
    out[valid] = colors[label[valid]]
    return out


def overlay_panel(image: np.ndarray, pred: np.ndarray, class_names: List[str], colors: np.ndarray, gt: Optional[np.ndarray] = None, ignore_label: int = 255, alpha: float = 0.55, groups: Optional[dict] = None) -> np.ndarray:
    """RGB panel [image | GT overlay | prediction overlay] plus a legend row of the classes present.
    With ``groups`` ({"novel": ids}) novel classes are marked "*" in the legend."""
    panels = [image]
    for label in ([gt] if gt is not None else []) + [pred]:
        color = colorize(label, colors, ignore_label)
        blend = (image * (1 - alpha) + color * alpha).astype(np.uint8)
        blend[label == ignore_label] = image[label == ignore_label]
        panels.append(blend)
    h, w = image.shape[:2]
    row = np.concatenate(panels, axis=1)
    titles = ["image"] + (["ground truth"] if gt is not None else []) + ["prediction"]
    for i, title in enumerate(titles):
        cv2.putText(row, title, (i * w + 3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    present = sorted(set(np.unique(pred).tolist()) | (set(np.unique(gt).tolist()) if gt is not None else set()))
    present = [c for c in present if c != ignore_label and c < len(class_names)]
    novel = set((groups or {}).get("novel", []))
    per_line = max(1, row.shape[1] // 130)
    lines = (len(present) + per_line - 1) // per_line
    legend = np.full((max(lines, 1) * 16 + 4, row.shape[1], 3), 255, dtype=np.uint8)
    for k, c in enumerate(present):
        x, y = (k % per_line) * 130 + 4, (k // per_line) * 16 + 4
        cv2.rectangle(legend, (x, y), (x + 12, y + 12), tuple(int(v) for v in colors[c]), -1)
        name = class_names[c] + (" *" if c in novel else "")
        cv2.putText(legend, name[:18], (x + 16, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([row, legend], axis=0)


@torch.no_grad()
def write_overlays(cfg, model, dataset_name: str, num_images: int, output_dir: Optional[str] = None) -> List[str]:
    """Run ``model`` on the first ``num_images`` of ``dataset_name`` and write overlay PNGs; returns paths."""
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "overlays", dataset_name)
    os.makedirs(output_dir, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    names = list(meta.stuff_classes)
    colors = class_colors(len(names), meta)
    ignore = meta.get("ignore_label", 255)
    groups = {"novel": meta.get("novel_class_ids", [])}
    mapper = SemSegTestMapper(cfg)
    was_training = model.training
    model.eval()
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        inputs = mapper(record)
        scores = model([inputs])[0]["sem_seg"]
        pred = scores.argmax(0).cpu().numpy().astype(np.int64)
        image = utils.read_image(record["file_name"], format="RGB")
        gt = utils.read_image(record["sem_seg_file_name"]).astype(np.int64) if "sem_seg_file_name" in record else None
        panel = overlay_panel(image, pred, names, colors, gt=gt, ignore_label=ignore, groups=groups)
        path = os.path.join(output_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + "_overlay.png")
        cv2.imwrite(path, panel[:, :, ::-1])
        paths.append(path)
    model.train(was_training)
    logger.info(f"Wrote {len(paths)} prediction overlays to {output_dir}")
    return paths
