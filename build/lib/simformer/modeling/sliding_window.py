"""Sliding-window inference for images larger than the training crop (``TEST.SLIDING_WINDOW``).

:class:`SlidingWindowInference` wraps a trained model (detectron2's TTA-wrapper pattern) and keeps its
inference data contract: a list of dicts with ``image`` (3, H, W) and optional ``height`` / ``width`` ->
per image ``{"sem_seg": (K, height, width)}``. Each input is normalised as the model does it, cut into
windows of ``window`` (h, w) pixels every ``stride`` pixels (the last window of a row / column is moved
back to end at the image border; an image no larger than a window is one window), the windows of an image
go through the model in batches (each padded to the model's size divisibility), and the per-class scores
are averaged where windows overlap. When one window covers the image the result equals whole-image
inference. The wrapped model provides ``pixel_mean``, ``pixel_std``, ``size_divisibility`` and
``padded_scores(images (N, 3, H, W)) -> (N, K, H, W)`` (:meth:`simformer.model.MaskFormer.padded_scores`).
"""
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.structures import ImageList
from torch import nn

from ..inference import postprocess_sem_seg

__all__ = ["SlidingWindowInference", "window_starts", "sliding_window_params"]


def window_starts(length: int, window: int, stride: int) -> List[int]:
    """Start offsets of windows of size ``window`` every ``stride`` along an axis of ``length`` pixels, the
    last one ending at the border: every pixel is covered; ``[0]`` when ``length <= window``."""
    if window < 1 or stride < 1:
        raise ValueError(f"sliding window: size and stride must be >= 1, got {window}, {stride} (TEST.SLIDING_WINDOW.SIZE / STRIDE)")
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def sliding_window_params(cfg) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(window, stride) as (h, w) pairs from ``TEST.SLIDING_WINDOW`` (0 = defaults, see ``config.py``)."""
    sw = cfg.TEST.SLIDING_WINDOW
    size = tuple(int(v) for v in sw.SIZE)
    if len(size) != 2:
        raise ValueError(f"TEST.SLIDING_WINDOW.SIZE must be (h, w), got {sw.SIZE}")
    if size == (0, 0):
        if cfg.INPUT.CROP.TYPE != "absolute":
            raise ValueError(f"TEST.SLIDING_WINDOW.SIZE (0, 0) means INPUT.CROP.SIZE, which is relative (INPUT.CROP.TYPE {cfg.INPUT.CROP.TYPE!r}): set SIZE in pixels")
        size = tuple(int(v) for v in cfg.INPUT.CROP.SIZE)
    stride = tuple(int(v) for v in sw.STRIDE)
    if len(stride) != 2:
        raise ValueError(f"TEST.SLIDING_WINDOW.STRIDE must be (h, w), got {sw.STRIDE}")
    if stride == (0, 0):
        stride = tuple(max(1, 2 * s // 3) for s in size)
    if min(size) < 1 or min(stride) < 1:
        raise ValueError(f"TEST.SLIDING_WINDOW.SIZE {size} and STRIDE {stride} must be positive")
    if stride[0] > size[0] or stride[1] > size[1]:
        raise ValueError(f"TEST.SLIDING_WINDOW.STRIDE {stride} larger than SIZE {size} would leave pixels unpredicted")
    return size, stride


class SlidingWindowInference(nn.Module):
    """Sliding-window wrapper of a model (module doc).

    Args:
        model: the wrapped model (its own inference is not used).
        window: (h, w) window size in pixels of the model input (after test-time resizing).
        stride: (h, w) step between windows (<= window).
        batch_size: windows per forward pass.
    """

    def __init__(self, model: nn.Module, window: Sequence[int], stride: Sequence[int], batch_size: int = 4):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"sliding window: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.window = (int(window[0]), int(window[1]))
        self.stride = (int(stride[0]), int(stride[1]))
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg, model: nn.Module, batch_size: int = 4) -> "SlidingWindowInference":
        window, stride = sliding_window_params(cfg)
        return cls(model, window, stride, batch_size)

    @torch.no_grad()
    def image_scores(self, image: torch.Tensor) -> torch.Tensor:
        """One normalised image (3, H, W) -> (K, H, W) scores averaged over the windows covering each pixel."""
        h, w = image.shape[-2:]
        wh, ww = min(self.window[0], h), min(self.window[1], w)
        boxes = [(y, x) for y in window_starts(h, wh, self.stride[0]) for x in window_starts(w, ww, self.stride[1])]
        total = count = None
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start : start + self.batch_size]
            crops = ImageList.from_tensors([image[:, y : y + wh, x : x + ww] for y, x in chunk], self.model.size_divisibility)
            scores = self.model.padded_scores(crops.tensor)[:, :, :wh, :ww]  # (n, K, wh, ww)
            if total is None:
                total = scores.new_zeros((scores.shape[1], h, w))
                count = scores.new_zeros((1, h, w))
            for s, (y, x) in zip(scores, chunk):
                total[:, y : y + wh, x : x + ww] += s
                count[:, y : y + wh, x : x + ww] += 1
        return total / count

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        if self.model.training:
            raise RuntimeError("SlidingWindowInference is for inference: call model.eval() first")
        device = self.model.pixel_mean.device
        results = []
        for x in batched_inputs:
            image = (x["image"].to(device) - self.model.pixel_mean) / self.model.pixel_std
            h, w = image.shape[-2:]
            scores = self.image_scores(image)
            results.append({"sem_seg": postprocess_sem_seg(scores, (h, w), x.get("height", h), x.get("width", w))})
        return results
