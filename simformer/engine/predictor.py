"""The one predictor: a trained model from a config, for lists of RGB images (detectron2's
``DefaultPredictor`` for batches). ``simformer-predict`` (:mod:`simformer.tools.predict`) is the command
line around it; benchmarks and user code use it directly.

:class:`Predictor` builds the model of ``cfg``, loads the weights through the project's checkpointer
(:class:`~simformer.engine.checkpoint.AtomicCheckpointer`; no file = an error, other tensor shapes = an
error naming the tensor), resizes every image as at test time (``INPUT.MIN_SIZE_TEST`` /
``MAX_SIZE_TEST``, as :class:`~simformer.data.dataset_mappers.sem_seg_mapper.SemSegTestMapper`) and runs
the images whose resized sizes are equal together, at most ``batch_size`` per forward pass. Images are
never padded to a common size: padding would change what the query decoder attends to, so a batch gives
the same scores as one image at a time. With ``TEST.SLIDING_WINDOW.ENABLED`` the windows of each image
are batched instead (:class:`~simformer.modeling.sliding_window.SlidingWindowInference`); with
``TEST.AUG.ENABLED`` each image's scales and flips
(:class:`~simformer.modeling.test_time_augmentation.SemanticSegmentorWithTTA`).
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch.nn import functional as F

from ..data.dataset_mappers.sem_seg_mapper import SemSegTestMapper
from ..modeling.sliding_window import SlidingWindowInference
from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA
from .checkpoint import AtomicCheckpointer

__all__ = ["Predictor", "run_grouped", "upsample_argmax"]

logger = logging.getLogger(__name__)


class Predictor:
    """``predictor(images)``: (H, W, 3) uint8 RGB arrays -> (H, W) int64 predicted train ids;
    ``predictor.scores(images)`` -> per image ``{"sem_seg": (K, H, W) float scores}`` (argmax = prediction).

    Args:
        cfg: a config with simformer's keys (it is cloned).
        weights: checkpoint file (default ``cfg.MODEL.WEIGHTS``; empty = random weights, with a warning).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        batch_size: images (or sliding windows) per forward pass.
    """

    def __init__(self, cfg, weights: Optional[str] = None, device: str = "auto", batch_size: int = 4):
        if batch_size < 1:
            raise ValueError(f"Predictor: batch_size must be >= 1, got {batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        weights = cfg.MODEL.WEIGHTS if weights is None else weights
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        self.cfg, self.device, self.batch_size = cfg, device, batch_size
        self.model = build_model(cfg).eval()
        self.missing_keys = self._load(weights) if weights else []
        if not weights:
            logger.warning("Predictor: no weights given (MODEL.WEIGHTS is empty): the model has random weights")
        self.resize = SemSegTestMapper(cfg).resize
        self.runner = SlidingWindowInference.from_config(cfg, self.model, batch_size) if cfg.TEST.SLIDING_WINDOW.ENABLED else self.model
        if cfg.TEST.AUG.ENABLED:  # multi-scale + flip TTA: one image per call, its views batched
            self.runner = SemanticSegmentorWithTTA.from_config(cfg, self.runner)
        self.input_format = cfg.INPUT.FORMAT
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES

    def _load(self, weights: str) -> List[str]:
        """Load ``weights`` with the project's checkpointer; return the model keys missing from the file."""
        ck = AtomicCheckpointer(self.model)
        local = ck.path_manager.get_local_path(weights)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"weights file not found: {weights}")
        incompatible = ck._load_model(ck._load_file(local))
        if incompatible.incorrect_shapes:
            k, have, want = incompatible.incorrect_shapes[0]
            raise ValueError(f"{weights} does not fit the config: {len(incompatible.incorrect_shapes)} tensors have other shapes (e.g. {k}: {tuple(have)} in the file, {tuple(want)} in the model; another NUM_CLASSES?)")
        missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
        if missing:
            logger.warning(f"{len(missing)} model parameters are not in {weights} (e.g. {missing[:3]}): do the config and the weights match?")
        return missing

    def prepare(self, rgb: np.ndarray, output_size: Optional[Tuple[int, int]] = None) -> Dict:
        """(H, W, 3) uint8 RGB -> model input dict, resized as at test time, in ``INPUT.FORMAT``. The model
        returns scores at ``output_size`` (default: the resized size)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"Predictor takes (H, W, 3) images, got shape {rgb.shape}")
        image = rgb
        if self.resize is not None:
            t = self.resize.get_transform(image)
            if isinstance(t, T.ResizeTransform):  # extreme aspect ratios: keep at least one pixel per side
                t = T.ResizeTransform(t.h, t.w, max(1, t.new_h), max(1, t.new_w), t.interp)
            image = t.apply_image(image)
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        elif self.input_format not in ("RGB", None):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r} is not supported by the predictor (RGB or BGR)")
        h, w = output_size or image.shape[:2]
        return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": h, "width": w}

    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray]) -> List[Dict[str, torch.Tensor]]:
        """(H, W, 3) uint8 RGB arrays -> per image ``{"sem_seg": (K, H, W)}`` at the image's own size."""
        inputs = [self.prepare(im, im.shape[:2]) for im in images]
        return run_grouped(self.runner, inputs, self.batch_size, windowed=self.runner is not self.model)

    def predict_prepared(self, inputs: Sequence[Dict], sizes: Sequence[Tuple[int, int]]) -> List[np.ndarray]:
        """Model inputs from :meth:`prepare` and the original (H, W) sizes -> (H, W) int64 train ids; the
        scores at the resized size are upsampled class-chunk by class-chunk (:func:`upsample_argmax`)."""
        results = run_grouped(self.runner, inputs, max(1, len(inputs)), windowed=self.runner is not self.model)
        return [upsample_argmax(o["sem_seg"], *size).cpu().numpy().astype(np.int64) for o, size in zip(results, sizes)]

    def __call__(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """(H, W, 3) uint8 RGB arrays -> (H, W) int64 predicted train ids."""
        return self.predict_prepared([self.prepare(im) for im in images], [im.shape[:2] for im in images])


def upsample_argmax(scores: torch.Tensor, height: int, width: int, max_elements: int = 1 << 25) -> torch.Tensor:
    """argmax over classes of ``scores`` (K, h, w) bilinearly resized to (height, width), computed in
    chunks of classes so that large images need no (K, height, width) tensor. Same result (ties: lowest
    class id) as ``interpolate(scores).argmax(0)``."""
    k, h, w = scores.shape
    if (h, w) == (height, width):
        return scores.argmax(0)
    chunk = max(1, max_elements // max(1, height * width))
    best = arg = None
    for start in range(0, k, chunk):
        up = F.interpolate(scores[None, start : start + chunk].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        val, idx = up.max(0)
        idx = idx + start
        if best is None:
            best, arg = val, idx
        else:
            better = val > best
            best, arg = torch.where(better, val, best), torch.where(better, idx, arg)
    return arg


def run_grouped(runner, inputs: Sequence[Dict], batch_size: int, windowed: bool = False) -> List[Dict]:
    """Run model input dicts through ``runner`` (a model, :class:`SlidingWindowInference` or
    :class:`SemanticSegmentorWithTTA`), equal-size images together, at most ``batch_size`` per call (one
    image per call when ``windowed``: its windows / views are batched instead). Returns the runner's
    per-input results in input order."""
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
