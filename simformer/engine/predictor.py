"""Batched prediction from a config: detectron2's ``DefaultPredictor`` for lists of images.

:class:`BatchPredictor` builds the model of ``cfg``, loads ``MODEL.WEIGHTS`` (none: random weights),
resizes every image as at test time (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, as
:class:`~simformer.data.dataset_mappers.sem_seg_mapper.SemSegTestMapper`), and runs the images whose
resized sizes are equal together, at most ``batch_size`` per forward pass. Images are never padded to a
common size: padding would change what the query decoder attends to, so a batch gives the same scores as
one image at a time. With ``TEST.SLIDING_WINDOW.ENABLED`` the windows of each image are batched instead
(:class:`~simformer.modeling.sliding_window.SlidingWindowInference`); with ``TEST.AUG.ENABLED`` each image's
scales and flips (:class:`~simformer.modeling.test_time_augmentation.SemanticSegmentorWithTTA`).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..data.dataset_mappers.sem_seg_mapper import SemSegTestMapper
from ..modeling.sliding_window import SlidingWindowInference
from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA

__all__ = ["BatchPredictor", "run_grouped"]


class BatchPredictor:
    """``predictor(images)``: (H, W, 3) uint8 arrays in ``INPUT.FORMAT`` -> per image
    ``{"sem_seg": (K, H, W) float scores}`` at the image's own size (argmax = prediction).

    Args:
        cfg: a config with simformer's keys (frozen or not; it is cloned).
        batch_size: images (or sliding windows) per forward pass.
    """

    def __init__(self, cfg, batch_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"BatchPredictor: batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg.clone()
        self.batch_size = batch_size
        self.model = build_model(self.cfg).eval()
        if self.cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(self.model).load(self.cfg.MODEL.WEIGHTS)
        self.resize = SemSegTestMapper(self.cfg).resize
        self.runner = SlidingWindowInference.from_config(self.cfg, self.model, batch_size) if self.cfg.TEST.SLIDING_WINDOW.ENABLED else self.model
        if self.cfg.TEST.AUG.ENABLED:  # multi-scale + flip TTA: one image per call, its views batched
            self.runner = SemanticSegmentorWithTTA.from_config(self.cfg, self.runner)

    def prepare(self, image: np.ndarray) -> Dict:
        """(H, W, 3) uint8 -> model input dict (resized as at test time; ``height`` / ``width`` = H, W)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"BatchPredictor takes (H, W, 3) images, got shape {image.shape}")
        h, w = image.shape[:2]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": h, "width": w}

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> List[Dict[str, torch.Tensor]]:
        return run_grouped(self.runner, [self.prepare(im) for im in images], self.batch_size, windowed=self.runner is not self.model)


def run_grouped(runner, inputs: Sequence[Dict], batch_size: int, windowed: bool = False) -> List[Dict]:
    """Run model input dicts through ``runner`` (a model or :class:`SlidingWindowInference`), equal-size
    images together, at most ``batch_size`` per call (one image per call when ``windowed``: its windows are
    batched instead). Returns the runner's per-input results in input order."""
    groups: Dict[tuple, List[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x["image"].shape), []).append(i)
    step = 1 if windowed else batch_size
    out: List[Dict] = [None] * len(inputs)
    with torch.no_grad():
        for idx in groups.values():
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                for i, result in zip(chunk, runner([inputs[i] for i in chunk])):
                    out[i] = result
    return out
