"""Prediction overlays as PNG: image | ground truth | prediction, with a legend of the classes shown."""
import logging
import os
from typing import List, Optional

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.dataset_mappers.sem_seg_mapper import SemSegTestMapper
from ..data.image_io import read_image_file, read_label_file
from ..utils.overlay import class_colors, colorize, display_info, overlay_panel

__all__ = ["class_colors", "colorize", "display_info", "overlay_panel", "write_overlays"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def write_overlays(cfg, model, dataset_name: str, num_images: int, output_dir: Optional[str] = None) -> List[str]:
    """Run ``model`` on the first ``num_images`` of ``dataset_name`` and write overlay PNGs; returns paths."""
    output_dir = output_dir or os.path.join(cfg.OUTPUT_DIR, "overlays", dataset_name)
    os.makedirs(output_dir, exist_ok=True)
    names, colors, ignore, groups = display_info(MetadataCatalog.get(dataset_name))
    mapper = SemSegTestMapper(cfg)
    was_training = model.training
    model.eval()
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        inputs = mapper(record)
        scores = model([inputs])[0]["sem_seg"]
        pred = scores.argmax(0).cpu().numpy().astype(np.int64)
        image = read_image_file(record["file_name"], format="RGB")
        gt = read_label_file(record["sem_seg_file_name"]) if "sem_seg_file_name" in record else None
        panel = overlay_panel(image, pred, names, colors, gt=gt, ignore_label=ignore, groups=groups)
        path = os.path.join(output_dir, os.path.splitext(os.path.basename(record["file_name"]))[0] + "_overlay.png")
        cv2.imwrite(path, panel[:, :, ::-1])
        paths.append(path)
    model.train(was_training)
    logger.info(f"Wrote {len(paths)} prediction overlays to {output_dir}")
    return paths
