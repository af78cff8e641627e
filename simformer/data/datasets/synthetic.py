"""Built-in synthetic semantic-segmentation dataset: textured shapes on textured backgrounds.

Generated deterministically (seeded) on first use, cached under
``$DETECTRON2_DATASETS/simformer_synthetic`` and registered as ``synthetic_train`` / ``synthetic_val``.
Layout::

    <root>/images/{train,val}/<stem>.png   RGB uint8
    <root>/labels/{train,val}/<stem>.png   uint8 class ids 0..K-1 (255 = ignore, unused here)
    <root>/meta.json                       classes, generator version, params, counts (written last)

Classes are told apart by shape and texture only: every class draws its colours from one shared
palette, so no single pixel colour identifies a class. CLI::

    python -m simformer.data.datasets.synthetic [--root R] [--force]
"""
import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
from detectron2.data import DatasetCatalog

from .folder import register_sem_seg_folder

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock
    fcntl = None

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_STUFF_IDS",
    "SYNTHETIC_OBJECT_IDS",
    "SYNTHETIC_COLORS",
    "GENERATOR_VERSION",
    "DEFAULT_PARAMS",
    "OPEN_PARAMS",
    "UNKNOWN_KINDS",
    "default_synthetic_open_root",
    "default_synthetic_root",
    "generate_synthetic_dataset",
    "ensure_synthetic_dataset",
    "ensure_generated_dataset",
    "write_generated_dataset",
    "register_synthetic",
    "describe_synthetic",
    "SyntheticPrepare",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
_GENERATOR_TAG = "simformer_synthetic"
SPLITS = ("train", "val")

# (name, shape, texture) of every class; ids are list positions.
_CLASS_TABLE = [
    ("sky", "region", "soft-edged clouds over a brightness gradient"),
    ("grass", "region", "fine two-colour blades"),
    ("brick", "region", "brick wall: offset rows, mortar lines"),
    ("disk", "disk / ellipse", "concentric rings"),
    ("square", "square / rectangle", "checkerboard"),
    ("triangle", "triangle", "straight stripes"),
    ("star", "5-pointed star", "solid colour"),
    ("ring", "annulus", "polka dots"),
    ("cross", "plus sign", "grid lines"),
    ("hexagon", "hexagon", "zigzag stripes"),
    ("crescent", "crescent", "radial spokes"),
    ("arrow", "arrow", "rows of dashes"),
]
SYNTHETIC_CLASSES = [c[0] for c in _CLASS_TABLE]
SYNTHETIC_STUFF_IDS = [i for i, c in enumerate(_CLASS_TABLE) if c[1] == "region"]
SYNTHETIC_OBJECT_IDS = [i for i, c in enumerate(_CLASS_TABLE) if c[1] != "region"]
# Visualisation colours (distinct per class; unrelated to the colours painted in the images).
SYNTHETIC_COLORS = [
    [120, 170, 230], [60, 150, 60], [170, 80, 60], [230, 25, 75], [245, 130, 48], [255, 225, 25],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [0, 0, 128], [128, 128, 0], [0, 128, 128],
]

# The one palette every class paints with (RGB).
_PALETTE = np.array(
    [
        [200, 60, 50], [230, 140, 40], [225, 205, 60], [70, 160, 70], [40, 150, 150], [50, 90, 200],
        [130, 70, 170], [220, 120, 170], [130, 90, 50], [128, 128, 128], [225, 225, 225], [45, 45, 55],
    ],
    dtype=np.float32,
)

DEFAULT_PARAMS = {
    "image_size": 128,  # int (square) or [height, width]
    "num_train": 800,
    "num_val": 120,
    "seed": 0,
    "min_objects": 3,
    "max_objects": 6,
    "object_scale": [0.16, 0.45],  # object diameter range, as a fraction of the shorter image side
    "noise_std": 6.0,  # Gaussian pixel noise (0..255 scale)
    "color_jitter": 20.0,  # per-instance uniform jitter of each palette colour channel
    # Pixels of no class (label 255), as real data has: [lo, hi] objects per image of shapes and textures
    # outside the class list, painted among the labelled objects, and the probability that an image has an
    # unlabelled background patch of a fourth stuff texture. 0 (the default) = every pixel has a class.
    "unknown_objects": [0, 0],
    "unlabelled_patch_prob": 0.0,
}

# Generator parameters of the "open" variant (``synthetic_open_*``, ``synthetic_ws_*``): the same images
# with about 11 % of the pixels belonging to no class (labelled 255), in images with and without novel classes.
OPEN_PARAMS = {"unknown_objects": [0, 2], "unlabelled_patch_prob": 0.5}


def default_synthetic_root():
    """``$DETECTRON2_DATASETS/simformer_synthetic`` (``datasets/simformer_synthetic`` when unset)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "simformer_synthetic")


def default_synthetic_open_root():
    """``$DETECTRON2_DATASETS/simformer_synthetic_open``: the variant with unlabelled pixels."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "simformer_synthetic_open")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _normalize_params(params):
    """Merge ``params`` into :data:`DEFAULT_PARAMS`, validate, and return a JSON-compatible dict."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise TypeError(f"synthetic dataset: unknown parameter(s) {unknown}; expected some of {sorted(DEFAULT_PARAMS)}")
    p = dict(DEFAULT_PARAMS, **params)
    size = p["image_size"]
    size = [size, size] if _is_int(size) else list(size) if isinstance(size, (list, tuple)) else []
    if len(size) != 2 or not all(_is_int(s) and s >= 32 for s in size):
        raise ValueError(f"synthetic dataset: image_size must be an int or [height, width], each >= 32, got {p['image_size']!r}")
    p["image_size"] = [int(s) for s in size]
    for key in ("num_train", "num_val", "seed", "min_objects", "max_objects"):
        if not _is_int(p[key]) or p[key] < 0:
            raise ValueError(f"synthetic dataset: {key} must be a non-negative int, got {p[key]!r}")
        p[key] = int(p[key])
    if not 1 <= p["min_objects"] <= p["max_objects"]:
        raise ValueError(f"synthetic dataset: need 1 <= min_objects <= max_objects, got {p['min_objects']}, {p['max_objects']}")
    scale = p["object_scale"]
    lo, hi = (float(v) for v in scale) if isinstance(scale, (list, tuple)) and len(scale) == 2 else (0, 0)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"synthetic dataset: object_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {p['object_scale']!r}")
    p["object_scale"] = [lo, hi]
    unk = p["unknown_objects"]
    if not (isinstance(unk, (list, tuple)) and len(unk) == 2 and all(_is_int(v) for v in unk) and 0 <= unk[0] <= unk[1]):
        raise ValueError(f"synthetic dataset: unknown_objects must be [lo, hi] ints with 0 <= lo <= hi, got {unk!r}")
    p["unknown_objects"] = [int(v) for v in unk]
    prob = p["unlabelled_patch_prob"]
    if not isinstance(prob, (int, float, np.number)) or isinstance(prob, bool) or not 0 <= prob <= 1:
        raise ValueError(f"synthetic dataset: unlabelled_patch_prob must be a number in [0, 1], got {prob!r}")
    p["unlabelled_patch_prob"] = float(prob)
    for key in ("noise_std", "color_jitter"):
        if not isinstance(p[key], (int, float, np.number)) or isinstance(p[key], bool) or p[key] < 0:
            raise ValueError(f"synthetic dataset: {key} must be a number >= 0, got {p[key]!r}")
        p[key] = float(p[key])
    return p


# ---------------------------------------------------------------------------------------------------
# Drawing. Everything works on full-image coordinate grids (float32); objects use local coordinates
# (u, v) in pixels, rotated with the object, so textures rotate with their shape.
# ---------------------------------------------------------------------------------------------------
def _smooth_noise(rng, shape, cells):
    """Low-frequency noise in [0, 1]: a ``cells`` grid of uniforms, bicubically upsampled."""
    h, w = shape
    grid = rng.random((cells[0], cells[1])).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


_PALETTE_DIST = np.sqrt(((_PALETTE[:, None] - _PALETTE[None]) ** 2).sum(-1))
_MIN_PAIR_DIST = 100.0  # the two colours of a texture always contrast


def _pick_colors(rng, jitter, allowed=None):
    """Two contrasting palette colours (from ``allowed`` indices when given), each jittered per channel."""
    pool = np.arange(len(_PALETTE)) if allowed is None else np.asarray(allowed)
    first = rng.choice(pool)
    partners = pool[_PALETTE_DIST[first, pool] >= _MIN_PAIR_DIST]
    second = rng.choice(partners) if len(partners) else pool[np.argmax(_PALETTE_DIST[first, pool])]
    idx = np.array([first, second])
    cols = _PALETTE[idx] + rng.uniform(-jitter, jitter, size=(2, 3)).astype(np.float32)
    return idx, np.clip(cols, 0, 255)


def _stuff_texture(kind, rng, yy, xx):
    """``(t, shade)`` of a background texture: mixing weight in [0, 1] (0 = first colour, 1 = second)
    and a brightness factor. Mostly t in {0, 1}, like the objects, so colour statistics stay shared."""
    h, w = yy.shape
    if kind == "sky":  # soft-edged clouds over a brightness gradient
        a = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(a) + yy * np.sin(a)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        clouds = _smooth_noise(rng, (h, w), (5, 5))
        t = np.clip((clouds - rng.uniform(0.45, 0.65)) * 6.0 + 0.5, 0, 1)
        return t, 0.8 + 0.4 * ramp
    if kind == "grass":  # two-colour blades, 1 px wide and about 3 px long
        blades = rng.random((max(h // 3, 2), w)).astype(np.float32)
        t = (cv2.resize(blades, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.float32)
        return t, np.ones_like(t)
    if kind == "brick":  # offset rows of bricks with thin mortar lines, each brick its own brightness
        a = rng.uniform(-0.25, 0.25)
        u = xx * np.cos(a) + yy * np.sin(a)
        v = -xx * np.sin(a) + yy * np.cos(a)
        bh = rng.uniform(6, 9)
        bw = bh * rng.uniform(1.8, 2.6)
        v = v + rng.uniform(0, bh)
        row = np.floor(v / bh)
        u = u + rng.uniform(0, bw) + (row % 2) * bw / 2
        col = np.floor(u / bw)
        shades = rng.uniform(0.85, 1.15, size=(64, 64)).astype(np.float32)
        shade = shades[np.mod(row, 64).astype(np.int64), np.mod(col, 64).astype(np.int64)]
        mortar = (np.mod(v, bh) < 1.6) | (np.mod(u, bw) < 1.6)
        return mortar.astype(np.float32), shade
    raise KeyError(kind)


def _wavy_split(rng, yy, xx):
    """Boolean mask of one side of a random wavy line through the image."""
    h, w = yy.shape
    a = rng.uniform(0, 2 * np.pi)
    s = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a)
    t = -(xx - w / 2) * np.sin(a) + (yy - h / 2) * np.cos(a)
    size = min(h, w)
    offset = rng.uniform(-0.2, 0.2) * size
    wave = np.zeros_like(t)
    for _ in range(2):
        wave += rng.uniform(0.02, 0.08) * size * np.sin(2 * np.pi * t / (size * rng.uniform(0.3, 1.0)) + rng.uniform(0, 2 * np.pi))
    return s > offset + wave


def _shape_mask(shape, nu, nv):
    """Boolean mask of a unit-size shape in normalised local coordinates (extent about [-1, 1])."""
    r2 = nu * nu + nv * nv
    if shape == "disk":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(nu), np.abs(nv)) <= 0.78
    if shape == "triangle":
        m = np.ones(nu.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            m &= nu * np.cos(a) + nv * np.sin(a) <= 0.6
        return m
    if shape == "star":
        phi = np.arctan2(nv, nu)
        sector = 2 * np.pi / 5
        tri = np.abs(2 * np.mod(phi, sector) / sector - 1)  # 1 at the tips, 0 between
        rb = 0.5 + 0.5 * tri**1.5
        return r2 <= rb * rb
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "cross":
        au, av = np.abs(nu), np.abs(nv)
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "hexagon":
        m = np.ones(nu.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 6 + np.pi * k / 3
            m &= np.abs(nu * np.cos(a) + nv * np.sin(a)) <= 0.866
        return m
    if shape == "crescent":
        return (r2 <= 1.0) & ((nu - 0.4) ** 2 + nv * nv > 0.75**2)
    if shape == "arrow":
        shaft = (nu >= -0.95) & (nu <= 0.15) & (np.abs(nv) <= 0.3)
        head = (nu >= 0.1) & (nu <= 0.95) & (np.abs(nv) <= (0.95 - nu) * 1.0)
        return shaft | head
    raise KeyError(shape)


# Objects of no class (label 255): shapes and textures that no class has.
UNKNOWN_KINDS = [("pentagon", "diagonal hatching"), ("L-shape", "speckles"), ("half-disk", "concentric squares")]


def _unknown_shape_mask(shape, nu, nv):
    if shape == "pentagon":
        m = np.ones(nu.shape, dtype=bool)
        for k in range(5):
            a = np.pi / 2 + 2 * np.pi * k / 5
            m &= nu * np.cos(a) + nv * np.sin(a) <= 0.8
        return m
    if shape == "L-shape":
        return ((nu >= -0.9) & (nu <= -0.25) & (np.abs(nv) <= 0.9)) | ((nu >= -0.9) & (nu <= 0.9) & (nv >= 0.25) & (nv <= 0.9))
    if shape == "half-disk":
        return (nu * nu + nv * nv <= 1.0) & (nv >= -0.1)
    raise KeyError(shape)


def _unknown_texture(kind, rng, u, v):
    ph = rng.uniform(0, 100)
    if kind == "diagonal hatching":
        p = rng.uniform(4, 7)
        return ((np.mod(u + v + ph, p) < 1.5) | (np.mod(u - v + ph, p) < 1.5)).astype(np.float32)
    if kind == "speckles":
        return (rng.random(u.shape) < 0.3).astype(np.float32)
    if kind == "concentric squares":
        p = rng.uniform(4, 7)
        return (np.mod(np.maximum(np.abs(u), np.abs(v)), p) < p / 2).astype(np.float32)
    raise KeyError(kind)


def _object_texture(shape, rng, u, v, radius):
    """Mixing weight in [0, 1] of an object's texture; ``u, v`` are local pixel coordinates."""
    ph = rng.uniform(0, 100)
    if shape == "disk":  # concentric rings
        p = rng.uniform(4, 7)
        return (np.mod(np.sqrt(u * u + v * v), p) < p / 2).astype(np.float32)
    if shape == "square":  # checkerboard
        c = rng.uniform(3, 5)
        return (np.mod(np.floor((u + ph) / c) + np.floor((v + ph) / c), 2)).astype(np.float32)
    if shape == "triangle":  # straight stripes
        p = rng.uniform(4, 8)
        return (np.mod(u + ph, p) < p / 2).astype(np.float32)
    if shape == "star":  # solid
        return np.zeros(u.shape, dtype=np.float32)
    if shape == "ring":  # polka dots on a square lattice
        p = rng.uniform(5, 8)
        du = np.mod(u + ph, p) - p / 2
        dv = np.mod(v + ph, p) - p / 2
        return (du * du + dv * dv <= (0.3 * p) ** 2).astype(np.float32)
    if shape == "cross":  # grid lines
        p = rng.uniform(4, 7)
        return ((np.mod(u + ph, p) < 1.5) | (np.mod(v + ph, p) < 1.5)).astype(np.float32)
    if shape == "hexagon":  # zigzag stripes (peak-to-peak amplitude about one period)
        p = rng.uniform(5, 8)
        zig = 2 * np.abs(np.mod(v, p) - p / 2)
        return (np.mod(u + ph + zig, p) < p / 2).astype(np.float32)
    if shape == "crescent":  # radial spokes about 5 px wide at the rim
        n = max(6, int(round(2 * np.pi * radius / rng.uniform(8, 12))))
        phi = np.arctan2(v, u) + ph
        return (np.mod(np.floor(phi * n / (2 * np.pi)), 2)).astype(np.float32)
    if shape == "arrow":  # rows of dashes, alternate rows shifted by half a dash
        p = rng.uniform(5, 7)
        row = np.floor((v + ph) / 4.0)
        return ((np.mod(v + ph, 4.0) < 2.0) & (np.mod(u + ph + row * p, 2 * p) < p)).astype(np.float32)
    raise KeyError(shape)


def _place_objects(rng, n, h, w, scale):
    """Centres and radii of ``n`` objects; overlaps allowed but centres kept apart (partial occlusion)."""
    side = min(h, w)
    placed = []
    for _ in range(n):
        radius = rng.uniform(scale[0], scale[1]) * side / 2
        best, best_gap = None, -np.inf
        for _ in range(30):
            cy = rng.uniform(0.4 * radius, h - 0.4 * radius)
            cx = rng.uniform(0.4 * radius, w - 0.4 * radius)
            gap = min((math.hypot(cx - x, cy - y) - 0.75 * (radius + r) for y, x, r in placed), default=np.inf)
            if gap >= 0:
                best = (cy, cx, radius)
                break
            if gap > best_gap:
                best, best_gap = (cy, cx, radius), gap
        placed.append(best)
    return placed


def _render(rng, classes, p, extra_rng=None):
    """One (image HxWx3 uint8, label HxW uint8) pair containing objects of ``classes`` (painter's order).

    ``extra_rng`` (only with ``unknown_objects`` / ``unlabelled_patch_prob``) draws what has no class: a
    background patch of a fourth texture and objects of :data:`UNKNOWN_KINDS`, all labelled 255. It is a
    separate stream, so the labelled content is that of the variant without them (minus what they cover)."""
    h, w = p["image_size"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = p["color_jitter"]
    img = np.empty((h, w, 3), dtype=np.float32)
    label = np.empty((h, w), dtype=np.uint8)

    # Background: 2-3 regions separated by wavy lines, each a distinct stuff class.
    n_regions = int(rng.integers(2, 4))
    region = _wavy_split(rng, yy, xx).astype(np.int64)
    if n_regions == 3:
        region = np.where(region == 1, 1 + _wavy_split(rng, yy, xx), 0)
    stuff = rng.permutation(SYNTHETIC_STUFF_IDS)[:n_regions]
    used = []
    for k, cls in enumerate(stuff):
        m = region == k
        idx, (c1, c2) = _pick_colors(rng, jitter)
        used.extend(idx.tolist())
        t, shade = _stuff_texture(SYNTHETIC_CLASSES[cls], rng, yy, xx)
        t = t[..., None]
        img[m] = (shade[..., None] * ((1 - t) * c1 + t * c2))[m]
        label[m] = cls

    free = np.setdiff1d(np.arange(len(_PALETTE)), used)
    unknown = []
    if extra_rng is not None:
        if extra_rng.random() < p["unlabelled_patch_prob"]:  # a blob of "gravel" (no class) on the background
            blob = _smooth_noise(extra_rng, (h, w), (3, 3))
            m = blob > np.quantile(blob, 1.0 - extra_rng.uniform(0.08, 0.2))
            _, (c1, c2) = _pick_colors(extra_rng, jitter)
            t = (_smooth_noise(extra_rng, (h, w), (h // 4, w // 4)) > 0.5).astype(np.float32)[..., None]
            img[m] = ((1 - t) * c1 + t * c2)[m]
            label[m] = 255
        lo, hi = p["unknown_objects"]
        unknown = [int(k) for k in extra_rng.integers(0, len(UNKNOWN_KINDS), size=int(extra_rng.integers(lo, hi + 1)))]
    # Objects in colours not used by this image's background (at least 6 of 12 remain); unknown objects
    # (no class) are painted after the labelled ones, each at a random position (they may occlude them).
    for cls, (cy, cx, radius) in zip(classes, _place_objects(rng, len(classes), h, w, p["object_scale"])):
        shape = SYNTHETIC_CLASSES[cls]
        a = rng.uniform(0, 2 * np.pi)
        aspect = rng.uniform(0.8, 1.25)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        m = _shape_mask(shape, u / (radius * aspect), v * aspect / radius)
        _, (c1, c2) = _pick_colors(rng, jitter, free)
        t = _object_texture(shape, rng, u, v, radius)[..., None]
        shade = 1.0 + rng.uniform(-0.1, 0.1) * (u / radius)  # mild directional lighting
        img[m] = (shade[..., None] * ((1 - t) * c1 + t * c2))[m]
        label[m] = cls
    for kind in unknown:
        shape, texture = UNKNOWN_KINDS[kind]
        radius = extra_rng.uniform(p["object_scale"][0], p["object_scale"][1]) * min(h, w) / 2
        cy, cx = extra_rng.uniform(0.4 * radius, h - 0.4 * radius), extra_rng.uniform(0.4 * radius, w - 0.4 * radius)
        a = extra_rng.uniform(0, 2 * np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        m = _unknown_shape_mask(shape, u / radius, v / radius)
        _, (c1, c2) = _pick_colors(extra_rng, jitter, free)
        t = _unknown_texture(texture, extra_rng, u, v)[..., None]
        img[m] = ((1 - t) * c1 + t * c2)[m]
        label[m] = 255

    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    img = img * gain + bias + rng.normal(0.0, p["noise_std"], size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def _object_classes(rng, counts):
    """Per-image object classes from a stream of shuffled rounds, so every class appears every 9 objects."""
    total = int(sum(counts))
    rounds = -(-total // len(SYNTHETIC_OBJECT_IDS))
    stream = np.concatenate([rng.permutation(SYNTHETIC_OBJECT_IDS) for _ in range(rounds)]) if rounds else []
    out, start = [], 0
    for n in counts:
        out.append([int(c) for c in stream[start : start + n]])
        start += n
    return out


def generate_synthetic_dataset(out_dir, **params):
    """Write the dataset into ``out_dir`` (must be empty or missing); return its ``meta.json`` dict.

    Deterministic: the same params give byte-identical PNGs. ``meta.json`` is written last.
    """
    p = _normalize_params(params)
    open_world = p["unknown_objects"][1] > 0 or p["unlabelled_patch_prob"] > 0

    def per_split(split_id, n):
        split_rng = np.random.default_rng([p["seed"], split_id, 0])
        counts = split_rng.integers(p["min_objects"], p["max_objects"] + 1, size=n)
        for i, classes in enumerate(_object_classes(split_rng, counts)):
            extra = np.random.default_rng([p["seed"], split_id, 2, i]) if open_world else None
            yield _render(np.random.default_rng([p["seed"], split_id, 1, i]), classes, p, extra)

    meta = {"generator": _GENERATOR_TAG, "version": GENERATOR_VERSION, "params": p, "classes": SYNTHETIC_CLASSES,
            "stuff_ids": SYNTHETIC_STUFF_IDS, "object_ids": SYNTHETIC_OBJECT_IDS}  # fmt: skip
    return write_generated_dataset(out_dir, meta, {split: per_split(k, p[f"num_{split}"]) for k, split in enumerate(SPLITS)})


def write_generated_dataset(out_dir, meta, renders):
    """Write ``renders`` (split -> iterable of (image HxWx3 RGB uint8, label HxW uint8)) as
    ``<out_dir>/{images,labels}/<split>/<split>_<i>.png`` and ``meta.json`` (written last: ``meta`` plus
    counts and per-class / ignore pixel counts). ``out_dir`` must be empty or missing. Returns the meta."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"synthetic dataset: output folder '{out_dir}' is not empty")
    meta = dict(meta, counts={}, class_pixel_counts={}, ignore_pixel_counts={})
    k = len(meta["classes"])
    start = time.perf_counter()
    for split, items in renders.items():
        img_dir = os.path.join(out_dir, "images", split)
        lab_dir = os.path.join(out_dir, "labels", split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(lab_dir, exist_ok=True)
        pixels = np.zeros(256, dtype=np.int64)
        n = 0
        for i, (image, label) in enumerate(items):
            stem = f"{split}_{i:05d}"
            for path, arr in ((os.path.join(img_dir, stem + ".png"), image[:, :, ::-1]), (os.path.join(lab_dir, stem + ".png"), label)):
                if not cv2.imwrite(path, arr):
                    raise OSError(f"synthetic dataset: could not write '{path}'")
            pixels += np.bincount(label.ravel(), minlength=256)
            n = i + 1
            if n % 200 == 0:
                logger.info(f"{meta['generator']} {split}: {n} images")
        meta["counts"][split] = n
        meta["class_pixel_counts"][split] = pixels[:k].tolist()
        meta["ignore_pixel_counts"][split] = int(pixels[255])
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    logger.info(f"Generated {sum(meta['counts'].values())} images ({meta['generator']}) in {time.perf_counter() - start:.1f} s")
    return meta


def _read_meta(root):
    try:
        with open(os.path.join(root, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_current(root, p, tag=_GENERATOR_TAG, version=GENERATOR_VERSION):
    meta = _read_meta(root)
    return meta is not None and meta.get("generator", tag) == tag and meta.get("version") == version and meta.get("params") == p


def _check_replaceable(dst, tag=_GENERATOR_TAG):
    """Refuse to replace anything but an empty folder or a dataset written by this generator."""
    if not os.path.lexists(dst):
        return
    meta = _read_meta(dst)
    if not (os.path.isdir(dst) and (not os.listdir(dst) or (meta or {}).get("generator") == tag)):
        raise FileExistsError(
            f"'{dst}' exists but is not a simformer synthetic dataset (no meta.json from this generator); "
            "remove it or choose another root"
        )


def _replace_dir(src, dst, tag=_GENERATOR_TAG):
    """Move ``src`` to ``dst``, replacing a previous synthetic dataset there."""
    if os.path.lexists(dst):
        _check_replaceable(dst, tag)
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
        os.replace(dst, os.path.join(old, "data"))
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def ensure_synthetic_dataset(root=None, force=False, **params):
    """Generate the dataset at ``root`` unless a complete one with the same version/params is there.

    Generation happens in a temporary folder next to ``root`` that is then moved into place, under an
    exclusive lock (``.<root name>.lock``), so concurrent callers wait and then reuse the result.
    ``force=True`` regenerates. Returns the absolute root.
    """
    root = os.path.abspath(os.path.expanduser(root or default_synthetic_root()))
    return ensure_generated_dataset(root, _normalize_params(params), _GENERATOR_TAG, GENERATOR_VERSION, generate_synthetic_dataset, force=force)


def ensure_generated_dataset(root, p, tag, version, generate, force=False):
    """:func:`ensure_synthetic_dataset` for any generator: ``generate(out_dir, **p)`` writes a dataset whose
    ``meta.json`` has ``generator`` = ``tag``, ``version`` and ``params`` = ``p``."""
    if not force and _is_current(root, p, tag, version):
        return root
    parent, base = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, f".{base}.lock"), "a") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info(f"Waiting for another process generating the synthetic dataset at '{root}' ...")
                fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not force and _is_current(root, p, tag, version):
                return root
            _check_replaceable(root, tag)
            for name in os.listdir(parent):  # leftovers of a killed generator (we hold the lock)
                if name.startswith((f".{base}.tmp-", f".{base}.old-")):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            logger.info(f"Generating synthetic dataset at '{root}' ({p['num_train']} train, {p['num_val']} val) ...")
            tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
            try:
                generate(tmp, **p)
                _replace_dir(tmp, root, tag)
                logger.info(f"Synthetic dataset ready at '{root}'")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return root


class SyntheticPrepare:
    """Picklable, comparable ``prepare`` callable (for :func:`register_sem_seg_folder` and weak-shot
    registrations) that generates a synthetic dataset at ``root`` with generator ``params``:
    ``ensure(root, **params)`` (default :func:`ensure_synthetic_dataset`; any module-level generator's
    ``ensure_*`` function, e.g. the second synthetic dataset's)."""

    def __init__(self, root, params, ensure=None):
        self.root, self.params = root, dict(params)
        self.ensure = ensure or ensure_synthetic_dataset

    def __call__(self):
        self.ensure(self.root, **self.params)

    def __eq__(self, other):
        return isinstance(other, SyntheticPrepare) and (self.root, self.params, self.ensure) == (other.root, other.params, other.ensure)

    def __repr__(self):
        return f"{self.ensure.__name__}({self.root!r}, **{self.params!r})"


def register_synthetic(root=None, prefix="synthetic", **params):
    """Register ``<prefix>_train`` / ``<prefix>_val``; the data is generated when first loaded.

    ``params`` are generator parameters (see :data:`DEFAULT_PARAMS`); the loader regenerates the cached
    data if it was made with other params.
    """
    root = os.path.abspath(os.path.expanduser(root or default_synthetic_root()))
    p, defaults = _normalize_params(params), _normalize_params({})
    given = {k: v for k, v in p.items() if v != defaults[k]}  # keeps the loader's repr short
    for split in SPLITS:
        register_sem_seg_folder(
            f"{prefix}_{split}",
            os.path.join(root, "images", split),
            os.path.join(root, "labels", split),
            SYNTHETIC_CLASSES,
            image_ext=".png",
            label_ext=".png",
            ignore_label=255,
            colors=SYNTHETIC_COLORS,
            evaluator_type="sem_seg",
            prepare=SyntheticPrepare(root, given),
        )


def describe_synthetic():
    """Short text description of the synthetic dataset (for the README)."""
    p = DEFAULT_PARAMS
    stuff = ", ".join(f"{_CLASS_TABLE[i][0]} ({_CLASS_TABLE[i][2]})" for i in SYNTHETIC_STUFF_IDS)
    objects = ", ".join(f"{n} ({t})" for n, s, t in (_CLASS_TABLE[i] for i in SYNTHETIC_OBJECT_IDS))
    lo, hi = (round(s * p["image_size"]) for s in p["object_scale"])
    return (
        f"Synthetic dataset (`synthetic_train` / `synthetic_val`, {len(SYNTHETIC_CLASSES)} classes): "
        f"{p['image_size']}x{p['image_size']} RGB images, {p['num_train']} train / {p['num_val']} val, generated "
        f"deterministically (seed {p['seed']}) on first use into `$DETECTRON2_DATASETS/simformer_synthetic` "
        f"(or `python -m simformer.data.datasets.synthetic`). The background is split by wavy lines into 2-3 "
        f"regions of stuff classes: {stuff}. On top, {p['min_objects']}-{p['max_objects']} objects "
        f"({lo}-{hi} px across, random rotation, aspect, partial occlusion in painter's order) each with its "
        f"own shape and texture: {objects}. Every class paints with colours drawn from one shared "
        f"12-colour palette (plus per-instance colour jitter, global gain/bias and Gaussian pixel noise), so "
        f"no class can be recognised from a pixel's colour: shape and texture are what identify it. Labels "
        f"are exact class ids 0..{len(SYNTHETIC_CLASSES) - 1} (no ignore pixels)."
    )


def _register_builtin():
    """Import-time registration with defaults (skipped when the names already exist)."""
    if not all(f"synthetic_{s}" in DatasetCatalog.list() for s in SPLITS):
        register_synthetic()
    if not all(f"synthetic_open_{s}" in DatasetCatalog.list() for s in SPLITS):
        register_synthetic(default_synthetic_open_root(), prefix="synthetic_open", **OPEN_PARAMS)


_register_builtin()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate the simformer synthetic dataset and print a summary.")
    parser.add_argument("--root", default=None, help=f"output folder (default: {default_synthetic_root()})")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    parser.add_argument("--seed", type=int, default=DEFAULT_PARAMS["seed"])
    parser.add_argument("--num-train", type=int, default=DEFAULT_PARAMS["num_train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_PARAMS["num_val"])
    parser.add_argument("--image-size", type=int, default=DEFAULT_PARAMS["image_size"])
    parser.add_argument("--open", action="store_true", help="the variant with pixels of no class (synthetic_open_*, synthetic_ws_*)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = {k: v for k, v in dict(seed=args.seed, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size).items() if v != DEFAULT_PARAMS[k]}
    if args.open:
        params.update(OPEN_PARAMS)
    start = time.perf_counter()
    root = ensure_synthetic_dataset(args.root or (default_synthetic_open_root() if args.open else None), force=args.force, **params)
    elapsed = time.perf_counter() - start
    meta = _read_meta(root)
    print(f"Synthetic dataset at {root} (ready in {elapsed:.1f} s, generator v{meta['version']})")
    print("  " + ", ".join(f"{s}: {meta['counts'][s]} images" for s in SPLITS))
    print(f"  {'id':>3}  {'class':<10}" + "".join(f"{s + ' px %':>12}" for s in SPLITS))
    freqs = {s: np.asarray(meta["class_pixel_counts"][s], dtype=np.float64) for s in SPLITS}
    for i, name in enumerate(meta["classes"]):
        row = "".join(f"{100 * freqs[s][i] / max(freqs[s].sum() + meta.get('ignore_pixel_counts', {}).get(s, 0), 1):12.2f}" for s in SPLITS)
        print(f"  {i:>3}  {name:<10}{row}")
    ignore = meta.get("ignore_pixel_counts", {})
    totals = {s: freqs[s].sum() + ignore.get(s, 0) for s in SPLITS}
    print(f"  {'':>3}  {'no class':<10}" + "".join(f"{100 * ignore.get(s, 0) / max(totals[s], 1):12.2f}" for s in SPLITS))
    print()
    print(describe_synthetic())


if __name__ == "__main__":
    # Run the copy imported as simformer.data.datasets.synthetic (already imported by the package).
    from simformer.data.datasets.synthetic import main as _main

    _main()
