"""Weak-shot datasets from COCO JSON (the formats labelling tools export): instances or panoptic.

:func:`register_coco_weakshot` reads the JSON once, paints a train-id label PNG per image into a cache
folder (with a fingerprint of the JSON, the panoptic PNGs and the options: unchanged inputs are not
converted again) and registers the folder as a weak-shot dataset:

* classes = the JSON's categories in ascending ``id`` order (train id = position), names from ``name``;
* **real** (default): base categories' pixels get their train id, novel categories' pixels and pixels
  that no annotation covers are ignore (255), and each image's novel tags are the novel categories it
  has annotations of (or a separate ``tags_file``) -> :func:`~.weakshot.register_real_weakshot`;
* ``simulated=True`` (evaluation data, or a benchmark that hides novel masks itself): every category is
  painted -> :func:`~.weakshot.register_simulated_weakshot`.

Instances (``"segmentation"`` as polygons, RLE or uncompressed RLE, decoded with ``pycocotools``) are
painted largest first, so a smaller object lying on a larger one keeps its pixels; ``iscrowd`` regions are
painted like the others. Panoptic: ``panoptic_root/<file_name>`` PNGs whose RGB encodes the segment id
(``R + 256 G + 256^2 B``), ``segments_info`` giving each segment's category; id 0 = unlabelled (ignore).
Stuff and thing categories are both classes. Errors name the JSON and the image or segment at fault.
"""
import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ...utils.atomic_io import atomic_write
from .weakshot import register_real_weakshot, register_simulated_weakshot, resolve_class_ids

__all__ = ["register_coco_weakshot", "coco_label_maps", "COCO_KINDS"]

logger = logging.getLogger(__name__)

COCO_KINDS = ("instances", "panoptic")
_FINGERPRINT = "coco_labels.json"
_TAGS = "tags.json"


def _load_json(path: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO JSON '{path}' does not exist")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"COCO JSON '{path}': invalid JSON ({e})") from e
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"COCO JSON '{path}': no '{key}' list; expected a COCO instances or panoptic file")
    return data


def _categories(data: Dict, path: str):
    cats = sorted(data["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"COCO JSON '{path}': category ids listed twice")
    return [str(c["name"]) for c in cats], {c["id"]: i for i, c in enumerate(cats)}


def _instance_mask(ann: Dict, h: int, w: int, path: str) -> np.ndarray:
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):  # polygons
            if not seg:
                return np.zeros((h, w), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict):
            rle = dict(seg, counts=seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"])
        else:
            raise TypeError(f"unknown segmentation type {type(seg).__name__}")
        m = mask_utils.decode(rle)
    except Exception as e:  # noqa: BLE001  (pycocotools raises plain Exceptions)
        raise ValueError(f"COCO JSON '{path}': annotation {ann.get('id')} of image {ann.get('image_id')}: cannot decode its segmentation ({e})") from e
    if m.shape[:2] != (h, w):
        raise ValueError(f"COCO JSON '{path}': annotation {ann.get('id')} has a {m.shape[1]}x{m.shape[0]} mask, its image is {w}x{h}")
    return m.astype(bool) if m.ndim == 2 else m.any(axis=2)


def coco_label_maps(json_file: str, novel_ids: Sequence[int], *, kind: str = "instances", panoptic_root: Optional[str] = None, paint_novel: bool = False, ignore_label: int = 255):
    """Yield ``(image record, (H, W) uint8 train-id map, novel ids present)`` per image of the JSON (module
    doc); ``paint_novel`` paints novel categories too (else they are ignore)."""
    if kind not in COCO_KINDS:
        raise ValueError(f"kind must be one of {COCO_KINDS}, got {kind!r}")
    data = _load_json(json_file)
    names, train_of = _categories(data, json_file)
    novel = set(int(i) for i in novel_ids)
    by_image: Dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    if kind == "panoptic" and (not panoptic_root or not os.path.isdir(panoptic_root)):
        raise FileNotFoundError(f"panoptic PNG folder '{panoptic_root}' does not exist (panoptic_root of {json_file})")
    for image in sorted(data["images"], key=lambda r: r["file_name"]):
        h, w = int(image["height"]), int(image["width"])
        label = np.full((h, w), ignore_label, dtype=np.uint8)
        present = set()
        anns = by_image.get(image["id"], [])
        if kind == "instances":
            masks = []
            for ann in anns:
                if ann["category_id"] not in train_of:
                    raise ValueError(f"COCO JSON '{json_file}': annotation {ann.get('id')} has category {ann['category_id']}, which is not in 'categories'")
                masks.append((train_of[ann["category_id"]], _instance_mask(ann, h, w, json_file)))
            for cls, m in sorted(masks, key=lambda cm: -int(cm[1].sum())):  # largest first: small objects on top
                if m.any():
                    present.add(cls)
                    if cls not in novel or paint_novel:
                        label[m] = cls
        else:
            if len(anns) > 1:
                raise ValueError(f"COCO JSON '{json_file}': image {image['id']} has {len(anns)} panoptic annotations; expected one")
            if anns:
                ann = anns[0]
                png = os.path.join(panoptic_root, ann["file_name"])
                if not os.path.isfile(png):
                    raise FileNotFoundError(f"panoptic PNG '{png}' (image {image['id']} of {json_file}) does not exist")
                rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
                if rgb.shape[:2] != (h, w):
                    raise ValueError(f"panoptic PNG '{png}' is {rgb.shape[1]}x{rgb.shape[0]}, its image {w}x{h}")
                seg_ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
                lut_ids, lut_vals, seg_class = [0], [ignore_label], {}
                for seg in ann.get("segments_info", []):
                    if seg["category_id"] not in train_of:
                        raise ValueError(f"COCO JSON '{json_file}': segment {seg['id']} of image {image['id']} has category {seg['category_id']}, which is not in 'categories'")
                    cls = train_of[seg["category_id"]]
                    lut_ids.append(int(seg["id"]))
                    lut_vals.append(cls if (cls not in novel or paint_novel) else ignore_label)
                    seg_class[int(seg["id"])] = cls
                order = np.argsort(lut_ids)
                keys, vals = np.asarray(lut_ids)[order], np.asarray(lut_vals)[order]
                pos = np.searchsorted(keys, seg_ids).clip(max=len(keys) - 1)
                known = keys[pos] == seg_ids
                if not known.all():
                    bad = np.unique(seg_ids[~known])[:5].tolist()
                    raise ValueError(f"panoptic PNG '{png}': segment ids {bad} are not in the image's segments_info (nor 0 = unlabelled)")
                label = vals[pos].astype(np.uint8)
                present = {seg_class[int(i)] for i in np.unique(seg_ids) if int(i) in seg_class}
        yield image, label, sorted(present & novel)


def _fingerprint(json_file, panoptic_root, kind, novel_ids, paint_novel):
    st = os.stat(json_file)
    parts = {"json": os.path.abspath(json_file), "size": st.st_size, "mtime": st.st_mtime_ns, "kind": kind, "novel": sorted(novel_ids), "paint_novel": paint_novel}
    if kind == "panoptic":
        parts["panoptic"] = sorted([f, os.stat(os.path.join(panoptic_root, f)).st_mtime_ns] for f in os.listdir(panoptic_root) if f.endswith(".png"))
    return parts


def register_coco_weakshot(
    name: str,
    image_root: str,
    json_file: str,
    novel_classes,
    *,
    kind: str = "instances",
    panoptic_root: Optional[str] = None,
    simulated: bool = False,
    tags_file: Optional[str] = None,
    cache_dir: Optional[str] = None,
    ignore_label: int = 255,
    **kwargs,
):
    """Register ``name`` from a COCO ``kind`` JSON (module doc); ``novel_classes`` are category names or
    train ids (positions in the id-sorted category list). Label PNGs (and, for real weak-shot, the tags
    JSON) are written to ``cache_dir`` (default ``<json file stem>_weakshot-<hash>`` next to the JSON) the
    first time (progress logged), then reused while the inputs are unchanged. ``tags_file`` replaces the
    tags derived from the annotations (real only). Other keyword arguments go to the weak-shot
    registration (e.g. ``colors``, ``exclude_stems``, metadata). Returns the ``Metadata``."""
    json_file = os.path.abspath(os.path.expanduser(json_file))
    data = _load_json(json_file)
    class_names, _ = _categories(data, json_file)
    novel_ids = resolve_class_ids(novel_classes, class_names, f"register_coco_weakshot('{name}'), novel_classes")
    panoptic_root = os.path.abspath(panoptic_root) if panoptic_root else None
    fingerprint = _fingerprint(json_file, panoptic_root, kind, novel_ids, simulated)
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8]
    cache_dir = os.path.abspath(cache_dir or os.path.splitext(json_file)[0] + f"_weakshot-{digest}")
    record = os.path.join(cache_dir, _FINGERPRINT)
    done = False
    if os.path.isfile(record):
        with open(record) as f:
            done = json.load(f) == fingerprint
    labels_dir = os.path.join(cache_dir, "labels")
    if not done:
        os.makedirs(labels_dir, exist_ok=True)
        if os.path.isfile(record):
            os.remove(record)
        start, tags = time.perf_counter(), {}
        for i, (image, label, novel_present) in enumerate(coco_label_maps(json_file, novel_ids, kind=kind, panoptic_root=panoptic_root, paint_novel=simulated, ignore_label=ignore_label)):
            stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
            atomic_write(os.path.join(labels_dir, stem + ".png"), lambda f: Image.fromarray(label).save(f, format="PNG"))
            tags[stem] = [class_names[c] for c in novel_present]
            if (i + 1) % 1000 == 0:
                logger.info(f"{name}: painted {i + 1} / {len(data['images'])} label maps ({time.perf_counter() - start:.0f} s)")
        atomic_write(os.path.join(cache_dir, _TAGS), lambda f: json.dump(tags, f, indent=0), mode="w")
        atomic_write(record, lambda f: json.dump(fingerprint, f), mode="w")
        logger.info(f"{name}: {len(tags)} label maps from {json_file} -> {labels_dir} in {time.perf_counter() - start:.1f} s")
    if simulated:
        return register_simulated_weakshot(name, image_root, labels_dir, class_names, novel_ids, ignore_label=ignore_label, **kwargs)
    return register_real_weakshot(name, image_root, labels_dir, class_names, tags_file or os.path.join(cache_dir, _TAGS), novel_ids, ignore_label=ignore_label, **kwargs)
