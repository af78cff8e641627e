"""Prediction with an exported ONNX model through onnxruntime, without detectron2 or torch.

:class:`OnnxPredictor` reads ``<model>.onnx`` and the ``<model>.onnx.json`` that ``simformer-export``
writes beside it (:func:`simformer.engine.export.export_metadata`) and does the pre / post-processing
of :class:`simformer.engine.predictor.Predictor` in NumPy: resize the shortest edge to ``min_size_test``
(long side at most ``max_size_test``; bilinear, as detectron2's ``ResizeShortestEdge`` on uint8 images),
channel order, ``(x - mean) / std``, zero padding to the size divisibility (or to the fixed input size
of a fixed-size export), then the scores cropped, resized bilinearly to the image's size (half-pixel
centres, as ``F.interpolate(align_corners=False)``) and argmax. Equal-size images run as one batch when
the model has a dynamic batch dimension. Same interface as ``Predictor`` (``prepare``,
``predict_prepared``, ``scores``, ``__call__``), so ``simformer-predict --onnx`` shares its I/O code.
"""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["OnnxPredictor", "resize_shortest_edge_shape", "resize_bilinear"]

_META_KEYS = ("input_shape", "input_format", "pixel_mean", "pixel_std", "size_divisibility", "min_size_test", "max_size_test", "num_classes")


def resize_shortest_edge_shape(h: int, w: int, short: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) of detectron2's ``ResizeShortestEdge.get_output_shape`` (at least 1 pixel per side)."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return max(1, int(nh + 0.5)), max(1, int(nw + 0.5))


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) float -> (C, height, width), bilinear with half-pixel centres (align_corners=False)."""
    c, h, w = x.shape
    if (h, w) == (height, width):
        return x

    def axis(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, None)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(x.dtype)

    y0, y1, fy = axis(h, height)
    x0, x1, fx = axis(w, width)
    rows = x[:, y0] * (1 - fy)[None, :, None] + x[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


class OnnxPredictor:
    """``predictor(images)``: (H, W, 3) uint8 RGB arrays -> (H, W) int64 train ids; ``scores(images)`` ->
    per image ``{"sem_seg": (K, H, W) float32}`` (module doc).

    Args:
        path: the ``.onnx`` file; its metadata is read from ``path + ".json"`` unless ``metadata`` is given.
        providers: onnxruntime execution providers (default: CPU).
    """

    device = "onnxruntime"

    def __init__(self, path: str, metadata: Optional[Dict] = None, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model file not found: {path}")
        if metadata is None:
            meta_path = path + ".json"
            if not os.path.isfile(meta_path):
                raise FileNotFoundError(f"{meta_path} not found: the metadata simformer-export writes next to the model (pre-processing, classes)")
            with open(meta_path) as f:
                metadata = json.load(f)
            missing = [k for k in _META_KEYS if k not in metadata]
            if missing:
                raise ValueError(f"{meta_path}: missing keys {missing}; re-export the model with simformer-export")
        self.meta = metadata
        self.session = ort.InferenceSession(path, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        shape = metadata["input_shape"]
        self.fixed_batch = shape[0]
        self.fixed_hw = (shape[2], shape[3]) if shape[2] is not None else None
        self.mean = np.asarray(metadata["pixel_mean"], dtype=np.float32)[:, None, None]
        self.std = np.asarray(metadata["pixel_std"], dtype=np.float32)[:, None, None]
        self.size_div = max(1, int(metadata["size_divisibility"]))
        self.num_classes = int(metadata["num_classes"])
        if metadata["input_format"] not in ("RGB", "BGR"):
            raise ValueError(f"{path}: input_format {metadata['input_format']!r} is not supported (RGB or BGR)")

    def prepare(self, rgb: np.ndarray, output_size: Optional[Tuple[int, int]] = None) -> Dict:
        """(H, W, 3) uint8 RGB -> ``{"image": (3, h, w) float32 normalised, "height", "width"}``."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"OnnxPredictor takes (H, W, 3) images, got shape {rgb.shape}")
        image = rgb
        short = int(self.meta["min_size_test"])
        if short > 0:
            nh, nw = resize_shortest_edge_shape(*rgb.shape[:2], short, int(self.meta["max_size_test"]))
            if (nh, nw) != rgb.shape[:2]:
                image = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((nw, nh), Image.BILINEAR))
        if self.meta["input_format"] == "BGR":
            image = image[:, :, ::-1]
        chw = (image.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        h, w = output_size or image.shape[:2]
        return {"image": chw, "height": h, "width": w}

    def _padded(self, images: List[np.ndarray]) -> np.ndarray:
        h, w = images[0].shape[-2:]
        if self.fixed_hw is not None:
            ph, pw = self.fixed_hw
            if h > ph or w > pw:
                raise ValueError(f"image resized to {h}x{w} does not fit the model's fixed input {ph}x{pw}: export with --dynamic or a larger --height / --width")
        else:
            ph, pw = -(-h // self.size_div) * self.size_div, -(-w // self.size_div) * self.size_div
        batch = np.zeros((len(images), 3, ph, pw), dtype=np.float32)
        for i, im in enumerate(images):
            batch[i, :, :h, :w] = im
        return batch

    def _run(self, inputs: Sequence[Dict]) -> List[np.ndarray]:
        """Inputs of one size -> (K, height, width) scores each."""
        step = self.fixed_batch or len(inputs)
        out = []
        for start in range(0, len(inputs), step):
            chunk = [x["image"] for x in inputs[start : start + step]]
            batch = self._padded(chunk)
            if self.fixed_batch and len(chunk) < self.fixed_batch:  # a fixed-batch graph: fill with copies
                batch = np.concatenate([batch] + [batch[-1:]] * (self.fixed_batch - len(chunk)))
            scores = self.session.run(None, {self.input_name: batch})[0][: len(chunk)]
            h, w = chunk[0].shape[-2:]
            for s, x in zip(scores, inputs[start : start + step]):
                out.append(resize_bilinear(s[:, :h, :w], x["height"], x["width"]))
        return out

    def run_grouped(self, inputs: Sequence[Dict]) -> List[np.ndarray]:
        groups: Dict[tuple, List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x["image"].shape, []).append(i)
        out: List[np.ndarray] = [None] * len(inputs)
        for idx in groups.values():
            for i, s in zip(idx, self._run([inputs[i] for i in idx])):
                out[i] = s
        return out

    def scores(self, images: Sequence[np.ndarray]) -> List[Dict[str, np.ndarray]]:
        return [{"sem_seg": s} for s in self.run_grouped([self.prepare(im, im.shape[:2]) for im in images])]

    def predict_prepared(self, inputs: Sequence[Dict], sizes: Sequence[Tuple[int, int]]) -> List[np.ndarray]:
        """Inputs from :meth:`prepare` and the original (H, W) sizes -> (H, W) int64 train ids."""
        scores = self.run_grouped([dict(x, height=h, width=w) for x, (h, w) in zip(inputs, sizes)])
        return [s.argmax(0).astype(np.int64) for s in scores]

    def __call__(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        return self.predict_prepared([self.prepare(im) for im in images], [im.shape[:2] for im in images])

    def display_info(self):
        """(class names, colours (K, 3) uint8, ignore label, groups) from the metadata."""
        from ..utils.overlay import display_info

        groups = self.meta.get("groups") or {}
        as_metadata = {"stuff_classes": self.meta.get("class_names"), "stuff_colors": self.meta.get("class_colors"), "ignore_label": int(self.meta.get("ignore_label", 255)),
                       "base_class_ids": groups.get("base"), "novel_class_ids": groups.get("novel")}  # fmt: skip
        return display_info(as_metadata, self.num_classes)
