"""A second synthetic weak-shot dataset, generated differently: classes that share a shape or a texture.

In the built-in synthetic dataset (:mod:`.synthetic`) every object class has its own shape *and* its own
texture, so one local cue identifies it. Here the 9 object classes are the 3 x 3 combinations of three
shapes (ellipse, diamond, trapezoid) and three textures (stripes, dots, checkerboard): a patch of stripes
is one of three classes until the outline is seen, and an outline is one of three until the texture is.
Everything else differs too: three other stuff textures (water, gravel, plain), larger objects (2-4 per
image, 0.24-0.55 of the image side), fewer training images (480), and no-class pixels (label 255) from
objects of a fourth shape and texture and from unlabelled patches, as real data has.

The novel classes form a Latin square (:data:`SHARED_WS_NOVEL_IDS`: striped ellipse, dotted diamond,
checkered trapezoid), so each novel class shares its shape with two base classes and its texture with
two others. Registered as ``synthetic_shared_{train,val}`` (full labels) and ``synthetic_shared_ws_*``
(the weak-shot split), generated on first use under ``$DETECTRON2_DATASETS/simformer_synthetic_shared``
by the same cached, locked, atomic machinery as the built-in dataset. CLI::

    python -m simformer.data.datasets.synthetic_shared [--root R] [--force]
"""
import argparse
import logging
import os
import time

import numpy as np
from detectron2.data import DatasetCatalog

from .folder import register_sem_seg_folder
from .synthetic import (
    SPLITS,
    SyntheticPrepare,
    _pick_colors,
    _place_objects,
    _read_meta,
    _smooth_noise,
    _wavy_split,
    ensure_generated_dataset,
    write_generated_dataset,
)
from .weakshot import register_simulated_weakshot

__all__ = [
    "SHARED_CLASSES",
    "SHARED_COLORS",
    "SHARED_WS_NOVEL_IDS",
    "SHARED_DEFAULT_PARAMS",
    "default_shared_root",
    "generate_shared_dataset",
    "ensure_shared_dataset",
    "register_synthetic_shared",
]

logger = logging.getLogger(__name__)

SHARED_GENERATOR_VERSION = 1
_TAG = "simformer_synthetic_shared"
_STUFF = ["water", "gravel", "plain"]
_SHAPES = ["ellipse", "diamond", "trapezoid"]
_TEXTURES = [("striped", "stripes"), ("dotted", "dots"), ("checkered", "checkerboard")]
# classes: 3 stuff, then shape-major object classes "<texture adjective> <shape>"
SHARED_CLASSES = _STUFF + [f"{adj} {shape}" for shape in _SHAPES for adj, _ in _TEXTURES]
_OBJECTS = [(shape, tex) for shape in _SHAPES for _, tex in _TEXTURES]  # class id 3 + k -> (shape, texture)
SHARED_STUFF_IDS = [0, 1, 2]
SHARED_OBJECT_IDS = list(range(3, 12))
# Latin square: every novel class shares its shape with two base classes and its texture with two others.
SHARED_WS_NOVEL_IDS = (3, 7, 11)  # striped ellipse, dotted diamond, checkered trapezoid
SHARED_COLORS = [
    [60, 110, 200], [150, 140, 120], [200, 200, 200], [230, 25, 75], [245, 130, 48], [255, 225, 25],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [0, 0, 128], [128, 128, 0], [0, 128, 128],
]

SHARED_DEFAULT_PARAMS = {
    "image_size": 128,
    "num_train": 480,
    "num_val": 120,
    "seed": 0,
    "min_objects": 2,
    "max_objects": 4,
    "object_scale": [0.24, 0.55],
    "noise_std": 6.0,
    "color_jitter": 20.0,
    "unknown_objects": [0, 1],  # objects of no class (a ring with grid lines), label 255
    "unlabelled_patch_prob": 0.3,  # probability of an unlabelled background patch, label 255
}


def default_shared_root():
    """``$DETECTRON2_DATASETS/simformer_synthetic_shared`` (``datasets/...`` when unset)."""
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "simformer_synthetic_shared")


def _normalize(params):
    unknown = sorted(set(params) - set(SHARED_DEFAULT_PARAMS))
    if unknown:
        raise TypeError(f"synthetic_shared dataset: unknown parameter(s) {unknown}; expected some of {sorted(SHARED_DEFAULT_PARAMS)}")
    p = dict(SHARED_DEFAULT_PARAMS, **params)
    size = p["image_size"]
    if not (isinstance(size, int) and size >= 32):
        raise ValueError(f"synthetic_shared dataset: image_size must be an int >= 32, got {size!r}")
    for key in ("num_train", "num_val", "seed"):
        if not isinstance(p[key], int) or p[key] < 0:
            raise ValueError(f"synthetic_shared dataset: {key} must be a non-negative int, got {p[key]!r}")
    if not 1 <= p["min_objects"] <= p["max_objects"]:
        raise ValueError(f"synthetic_shared dataset: need 1 <= min_objects <= max_objects, got {p['min_objects']}, {p['max_objects']}")
    p["object_scale"] = [float(v) for v in p["object_scale"]]
    p["unknown_objects"] = [int(v) for v in p["unknown_objects"]]
    return p


def _stuff(kind, rng, yy, xx):
    """Mixing weight ``t`` in [0, 1] and brightness ``shade`` of a stuff texture (HxW each)."""
    h, w = yy.shape
    if kind == "water":  # horizontal-ish wavy bands, period 6-9 px
        a = rng.uniform(-0.4, 0.4)
        v = -xx * np.sin(a) + yy * np.cos(a)
        u = xx * np.cos(a) + yy * np.sin(a)
        period = rng.uniform(6, 9)
        phase = 2.5 * np.sin(2 * np.pi * u / rng.uniform(20, 35) + rng.uniform(0, 6.3))
        return (np.sin(2 * np.pi * (v + phase) / period) > 0).astype(np.float32), np.ones((h, w), np.float32)
    if kind == "gravel":  # blobs 3-5 px across
        t = (_smooth_noise(rng, (h, w), (h // 4, w // 4)) > 0.5).astype(np.float32)
        return t, 0.9 + 0.2 * _smooth_noise(rng, (h, w), (4, 4))
    if kind == "plain":  # one colour under a brightness gradient
        a = rng.uniform(0, 2 * np.pi)
        ramp = xx * np.cos(a) + yy * np.sin(a)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        return np.zeros((h, w), np.float32), 0.75 + 0.5 * ramp
    raise KeyError(kind)


def _shape(shape, nu, nv):
    """Boolean mask of a unit-size shape in normalised local coordinates (extent about [-1, 1])."""
    if shape == "ellipse":
        return (nu / 1.0) ** 2 + (nv / 0.62) ** 2 <= 1.0
    if shape == "diamond":
        return np.abs(nu) + np.abs(nv) <= 1.0
    if shape == "trapezoid":  # wide base, narrow top
        return (np.abs(nv) <= 0.7) & (np.abs(nu) <= 0.95 - 0.45 * (nv + 0.7) / 1.4)
    if shape == "ring":  # the no-class objects
        r2 = nu * nu + nv * nv
        return (r2 <= 1.0) & (r2 >= 0.45**2)
    raise KeyError(shape)


def _texture(kind, rng, u, v):
    """Mixing weight in {0, 1} of an object texture; ``u, v`` local pixel coordinates (rotate with it)."""
    ph = rng.uniform(0, 100)
    if kind == "stripes":
        p = rng.uniform(5, 8)
        return (np.mod(u + ph, p) < p / 2).astype(np.float32)
    if kind == "dots":
        p = rng.uniform(6, 9)
        du, dv = np.mod(u + ph, p) - p / 2, np.mod(v + ph, p) - p / 2
        return (du * du + dv * dv <= (0.32 * p) ** 2).astype(np.float32)
    if kind == "checkerboard":
        c = rng.uniform(3.5, 5.5)
        return np.mod(np.floor((u + ph) / c) + np.floor((v + ph) / c), 2).astype(np.float32)
    if kind == "grid":  # the no-class objects
        p = rng.uniform(5, 7)
        return ((np.mod(u + ph, p) < 1.5) | (np.mod(v + ph, p) < 1.5)).astype(np.float32)
    raise KeyError(kind)


def _paint_object(img, label, mask_fn, tex_fn, rng, cy, cx, radius, free, jitter, value, yy, xx):
    a = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
    v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
    m = mask_fn(u / radius, v / radius)
    _, (c1, c2) = _pick_colors(rng, jitter, free)
    t = tex_fn(rng, u, v)[..., None]
    img[m] = ((1 - t) * c1 + t * c2)[m]
    label[m] = value


def _render(rng, classes, p):
    """One (image HxWx3 uint8, label HxW uint8) with objects of ``classes`` (ids in SHARED_OBJECT_IDS)."""
    h = w = p["image_size"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = p["color_jitter"]
    img = np.empty((h, w, 3), np.float32)
    label = np.empty((h, w), np.uint8)
    region = _wavy_split(rng, yy, xx).astype(np.int64)
    if rng.random() < 0.5:
        region = np.where(region == 1, 1 + _wavy_split(rng, yy, xx), 0)
    used = []
    for k, cls in enumerate(rng.permutation(SHARED_STUFF_IDS)[: int(region.max()) + 1]):
        m = region == k
        idx, (c1, c2) = _pick_colors(rng, jitter)
        used.extend(idx.tolist())
        t, shade = _stuff(SHARED_CLASSES[cls], rng, yy, xx)
        img[m] = (shade[..., None] * ((1 - t[..., None]) * c1 + t[..., None] * c2))[m]
        label[m] = cls
    if rng.random() < p["unlabelled_patch_prob"]:  # a no-class patch of coarse blotches
        blob = _smooth_noise(rng, (h, w), (3, 3))
        m = blob > np.quantile(blob, 1.0 - rng.uniform(0.08, 0.18))
        _, (c1, c2) = _pick_colors(rng, jitter)
        t = (_smooth_noise(rng, (h, w), (h // 8, w // 8)) > 0.5).astype(np.float32)[..., None]
        img[m] = ((1 - t) * c1 + t * c2)[m]
        label[m] = 255
    free = np.setdiff1d(np.arange(12), used)
    n_unknown = int(rng.integers(p["unknown_objects"][0], p["unknown_objects"][1] + 1))
    kinds = [("ring", "grid", 255)] * n_unknown + [(*_OBJECTS[c - 3], c) for c in classes]
    order = rng.permutation(len(kinds))
    kinds = [kinds[i] for i in order]
    for (shape, tex, value), (cy, cx, radius) in zip(kinds, _place_objects(rng, len(kinds), h, w, p["object_scale"])):
        _paint_object(img, label, lambda nu, nv, s=shape: _shape(s, nu, nv), lambda r, u, v, t=tex: _texture(t, r, u, v),
                      rng, cy, cx, radius, free, jitter, value, yy, xx)  # fmt: skip
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    img = img * gain + bias + rng.normal(0.0, p["noise_std"], size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def generate_shared_dataset(out_dir, **params):
    """Write the dataset into ``out_dir`` (empty or missing); return its ``meta.json`` dict. Deterministic."""
    p = _normalize(params)

    def per_split(split_id, n):
        rng = np.random.default_rng([p["seed"], split_id, 0])
        counts = rng.integers(p["min_objects"], p["max_objects"] + 1, size=n)
        stream = np.concatenate([rng.permutation(SHARED_OBJECT_IDS) for _ in range(-(-int(counts.sum()) // 9))])
        starts = np.concatenate([[0], np.cumsum(counts)])
        for i in range(n):
            yield _render(np.random.default_rng([p["seed"], split_id, 1, i]), [int(c) for c in stream[starts[i] : starts[i + 1]]], p)

    meta = {"generator": _TAG, "version": SHARED_GENERATOR_VERSION, "params": p, "classes": SHARED_CLASSES,
            "stuff_ids": SHARED_STUFF_IDS, "object_ids": SHARED_OBJECT_IDS}  # fmt: skip
    return write_generated_dataset(out_dir, meta, {s: per_split(k, p[f"num_{s}"]) for k, s in enumerate(SPLITS)})


def ensure_shared_dataset(root=None, force=False, **params):
    """Generate the dataset at ``root`` unless one with the same version / params is there; return the root."""
    root = os.path.abspath(os.path.expanduser(root or default_shared_root()))
    p = _normalize(params)
    return ensure_generated_dataset(root, p, _TAG, SHARED_GENERATOR_VERSION, generate_shared_dataset, force=force)


def register_synthetic_shared(root=None, **params):
    """Register ``synthetic_shared_{train,val}`` (full labels) and ``synthetic_shared_ws_{train,val}``
    (novel = :data:`SHARED_WS_NOVEL_IDS`, image-level labels only)."""
    root = os.path.abspath(os.path.expanduser(root or default_shared_root()))
    prepare = SyntheticPrepare(root, params, ensure_shared_dataset)
    for split in SPLITS:
        images, labels = os.path.join(root, "images", split), os.path.join(root, "labels", split)
        common = dict(image_ext=".png", label_ext=".png", ignore_label=255, colors=SHARED_COLORS, evaluator_type="sem_seg", prepare=prepare)
        register_sem_seg_folder(f"synthetic_shared_{split}", images, labels, SHARED_CLASSES, **common)
        register_simulated_weakshot(f"synthetic_shared_ws_{split}", images, labels, SHARED_CLASSES, list(SHARED_WS_NOVEL_IDS),
                                    split_name="synthetic_shared_ws", **common)  # fmt: skip


if not all(f"synthetic_shared_ws_{s}" in DatasetCatalog.list() for s in SPLITS):
    register_synthetic_shared()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate the shared-cue synthetic dataset and print its statistics.")
    parser.add_argument("--root", default=None, help=f"output folder (default: {default_shared_root()})")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    root = ensure_shared_dataset(args.root, force=args.force)
    meta = _read_meta(root)
    print(f"synthetic_shared dataset at {root} (ready in {time.perf_counter() - start:.1f} s)")
    for split in SPLITS:
        px = np.asarray(meta["class_pixel_counts"][split], np.float64)
        total = px.sum() + meta["ignore_pixel_counts"][split]
        parts = ", ".join(f"{n} {100 * c / total:.1f}" for n, c in zip(SHARED_CLASSES, px))
        print(f"  {split}: {meta['counts'][split]} images; pixel %: {parts}, no class {100 * meta['ignore_pixel_counts'][split] / total:.1f}")


if __name__ == "__main__":
    from simformer.data.datasets.synthetic_shared import main as _main

    _main()
