"""Multi-scale + flip test-time augmentation for semantic segmentation (``TEST.AUG``).

:class:`SemanticSegmentorWithTTA` wraps an inference runner — any of our models, or a
:class:`~simformer.modeling.sliding_window.SlidingWindowInference` around one — and keeps its data contract:
a list of dicts with ``image`` (3, h, w) (as the test mapper resized it) and ``height`` / ``width`` (the
original size) -> per image ``{"sem_seg": (K, height, width)}``. For every short side in ``min_sizes``
(the long side capped at ``max_size``) the original-size image is resized, run with and (``flip``)
without a horizontal flip — the two as one batch —, and the class **score maps** at the original
resolution (the runner's output) are averaged; flipped scores are flipped back first. Labels are never
voted: the argmax of the mean score is the prediction.

When a scale gives the size the test mapper already produced, the mapper's image is used as it is, so
one scale equal to ``INPUT.MIN_SIZE_TEST`` without flip is exactly plain inference.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from torch import nn

__all__ = ["SemanticSegmentorWithTTA", "uses_tta"]


def uses_tta(cfg) -> bool:
    """TTA for this run: ``TEST.AUG.ENABLED``, or ``TEST.AUG.PSEUDO_LABELS`` when writing pseudo-labels."""
    return bool(cfg.TEST.AUG.ENABLED or (cfg.TEST.PSEUDO_LABEL_DIR and cfg.TEST.AUG.PSEUDO_LABELS))


class SemanticSegmentorWithTTA(nn.Module):
    """Test-time augmentation wrapper (module doc).

    Args:
        runner: callable on a list of input dicts -> list of ``{"sem_seg": (K, height, width)}``.
        min_sizes: short sides to run (``TEST.AUG.MIN_SIZES``).
        max_size: cap of the long side (``TEST.AUG.MAX_SIZE``).
        flip: also run the horizontally flipped image at every scale (``TEST.AUG.FLIP``).
    """

    def __init__(self, runner, min_sizes: Sequence[int], max_size: int, flip: bool = True):
        super().__init__()
        if not min_sizes or min(int(s) for s in min_sizes) < 1:
            raise ValueError(f"TEST.AUG.MIN_SIZES must be a non-empty list of positive sizes, got {tuple(min_sizes)}")
        if int(max_size) < 1:
            raise ValueError(f"TEST.AUG.MAX_SIZE must be positive, got {max_size}")
        self.runner = runner
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @classmethod
    def from_config(cls, cfg, runner) -> "SemanticSegmentorWithTTA":
        aug = cfg.TEST.AUG
        return cls(runner, aug.MIN_SIZES, aug.MAX_SIZE, aug.FLIP)

    def _views(self, x: Dict) -> List[torch.Tensor]:
        """The image at every scale (3, h_s, w_s), in ``min_sizes`` order."""
        image = x["image"]
        h0, w0 = image.shape[-2:]
        height, width = int(x.get("height", h0)), int(x.get("width", w0))
        original = None
        views = []
        for size in self.min_sizes:
            shape = T.ResizeShortestEdge.get_output_shape(height, width, size, self.max_size)
            if tuple(shape) == (h0, w0):
                views.append(image)
                continue
            if original is None:  # undo the test mapper's resize once (as detectron2's DatasetMapperTTA does)
                original = image.permute(1, 2, 0).cpu().numpy()
                if (h0, w0) != (height, width):
                    original = T.ResizeTransform(h0, w0, height, width).apply_image(original)
            resized = T.ResizeTransform(height, width, shape[0], shape[1]).apply_image(original)
            views.append(torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))))
        return views

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        results = []
        for x in batched_inputs:
            h0, w0 = x["image"].shape[-2:]
            size = {"height": int(x.get("height", h0)), "width": int(x.get("width", w0))}
            total, n = None, 0
            for view in self._views(x):
                batch = [dict(size, image=view)] + ([dict(size, image=view.flip(-1))] if self.flip else [])
                outs = self.runner(batch)
                for k, out in enumerate(outs):
                    scores = out["sem_seg"].float()
                    if k == 1:
                        scores = scores.flip(-1)
                    total = scores.clone() if total is None else total.add_(scores)
                    n += 1
            results.append({"sem_seg": total / n})
        return results
