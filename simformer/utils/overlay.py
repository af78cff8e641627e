"""Drawing class maps: colours, names and the [image | ground truth | prediction] panel with a legend.

Pure NumPy / OpenCV (no detectron2, no torch): used by training overlays (:mod:`simformer.engine.visualize`),
``simformer-predict`` and its ONNX path, which runs without detectron2. ``metadata`` is anything with
``.get(key, default)`` (detectron2's ``Metadata`` or a dict).
"""
from typing import List, Optional

import cv2
import numpy as np

__all__ = ["class_colors", "colorize", "display_info", "overlay_panel"]


def class_colors(num_classes: int, metadata=None) -> np.ndarray:
    """(K, 3) uint8 RGB colours: the metadata's ``stuff_colors`` when present, else a fixed palette."""
    colors = metadata.get("stuff_colors", None) if metadata is not None else None
    if colors is not None and len(colors) >= num_classes:
        return np.asarray(colors[:num_classes], dtype=np.uint8)
    rng = np.random.RandomState(1234)
    return rng.randint(40, 256, size=(num_classes, 3)).astype(np.uint8)


def display_info(metadata=None, num_classes: Optional[int] = None):
    """``(class_names, colors (K, 3) uint8, ignore_label, groups)`` for drawing, from dataset metadata
    (``stuff_classes``, ``stuff_colors``, ``ignore_label``, ``base_class_ids`` / ``novel_class_ids``);
    without metadata (or when it has fewer classes than ``num_classes``) names are ``class <i>``."""
    names = list(metadata.get("stuff_classes", None) or []) if metadata is not None else []
    k = num_classes if num_classes is not None else len(names)
    names = names[:k] + [f"class {i}" for i in range(len(names), k)]
    ignore = metadata.get("ignore_label", 255) if metadata is not None else 255
    groups = {}
    for group, key in (("base", "base_class_ids"), ("novel", "novel_class_ids")):
        ids = metadata.get(key, None) if metadata is not None else None
        if ids is not None:
            groups[group] = [int(i) for i in ids]
    return names, class_colors(k, metadata), ignore, groups


def colorize(label: np.ndarray, colors: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) RGB; ignore pixels black."""
    out = np.zeros(label.shape + (3,), dtype=np.uint8)
    valid = (label != ignore_label) & (label < len(colors))
    out[valid] = colors[label[valid]]
    return out


def overlay_panel(image: np.ndarray, pred: np.ndarray, class_names: List[str], colors: np.ndarray, gt: Optional[np.ndarray] = None, ignore_label: int = 255, alpha: float = 0.55, groups: Optional[dict] = None) -> np.ndarray:
    """RGB panel [image | GT overlay | prediction overlay] plus a legend row of the classes present.
    With ``groups`` ({"novel": ids}) novel classes are marked "*" and framed in the legend, which then
    ends with "* = novel". Text grows with the image (scale 1 up to 256 px on the short side)."""
    panels = [image]
    for label in ([gt] if gt is not None else []) + [pred]:
        color = colorize(label, colors, ignore_label)
        blend = (image * (1 - alpha) + color * alpha).astype(np.uint8)
        blend[label == ignore_label] = image[label == ignore_label]
        panels.append(blend)
    h, w = image.shape[:2]
    s = max(1.0, min(h, w) / 256.0)
    font, thick = 0.35 * s, max(1, int(round(s)))
    row = np.concatenate(panels, axis=1)
    titles = ["image"] + (["ground truth"] if gt is not None else []) + ["prediction"]
    for i, title in enumerate(titles):  # white on a dark outline: readable on any image
        for color, t in (((0, 0, 0), thick + 2), ((255, 255, 255), thick)):
            cv2.putText(row, title, (i * w + int(3 * s), int(12 * s)), cv2.FONT_HERSHEY_SIMPLEX, font, color, t, cv2.LINE_AA)
    present = sorted(set(np.unique(pred).tolist()) | (set(np.unique(gt).tolist()) if gt is not None else set()))
    present = [c for c in present if c != ignore_label and 0 <= c < len(class_names)]
    novel = set((groups or {}).get("novel", []))
    entries = [(c, class_names[c] + (" *" if c in novel else "")) for c in present]
    if novel & set(present):
        entries.append((None, "* = novel"))
    box, line_h = int(12 * s), int(16 * s)
    widths = [cv2.getTextSize(name[:18], cv2.FONT_HERSHEY_SIMPLEX, font, thick)[0][0] for _, name in entries]
    step = max(widths, default=0) + box + int(14 * s)  # columns as wide as the longest name
    per_line = max(1, row.shape[1] // step)
    lines = (len(entries) + per_line - 1) // per_line
    legend = np.full((max(lines, 1) * line_h + int(4 * s), row.shape[1], 3), 255, dtype=np.uint8)
    for k, (c, name) in enumerate(entries):
        x, y = (k % per_line) * step + int(4 * s), (k // per_line) * line_h + int(4 * s)
        if c is not None:
            cv2.rectangle(legend, (x, y), (x + box, y + box), tuple(int(v) for v in colors[c]), -1)
            if c in novel:
                cv2.rectangle(legend, (x, y), (x + box, y + box), (0, 0, 0), thick)
            tx = x + box + int(4 * s)
        else:
            tx = x
        cv2.putText(legend, name[:18], (tx, y + int(10 * s)), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick, cv2.LINE_AA)
    return np.concatenate([row, legend], axis=0)
