#!/usr/bin/env python
"""What a model trained on the second synthetic dataset (``synthetic_shared``) gets wrong: per-class IoU,
the row-normalised confusion matrix, and where the object classes' pixels go: right, right shape but
wrong texture, right texture but wrong shape, another object class, or stuff.

    python benchmarks/shared_confusion.py RUN_DIR [--weights FILE] [--split val] [--json OUT]

``RUN_DIR`` is a training output folder (its ``config.yaml`` and, by default, ``model_final.pth``).
The object classes of ``synthetic_shared`` are the 3 shapes x 3 textures (shape-major ids 3..11), so the
split tells whether a model failed to learn the textures or the shapes.
"""
import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simformer.data.datasets.synthetic_shared import SHARED_CLASSES, SHARED_OBJECT_IDS, default_shared_root  # noqa: E402
from simformer.data.image_io import read_image_file, read_label_file  # noqa: E402
from simformer.evaluation.confusion import confusion_matrix  # noqa: E402

GROUPS = ("correct", "same_shape_wrong_texture", "same_texture_wrong_shape", "other_object", "stuff")


def object_pixel_groups(conf: np.ndarray) -> dict:
    """Share (%) of the object classes' pixels per kind of outcome (``GROUPS``), from a (K, K) confusion
    matrix (rows = ground truth) over the ``synthetic_shared`` classes."""
    counts = dict.fromkeys(GROUPS, 0)
    first = SHARED_OBJECT_IDS[0]
    for gt in SHARED_OBJECT_IDS:
        gt_shape, gt_texture = divmod(gt - first, 3)
        for pred in range(conf.shape[1]):
            n = int(conf[gt, pred])
            if pred == gt:
                counts["correct"] += n
            elif pred < first:
                counts["stuff"] += n
            elif (pred - first) // 3 == gt_shape:
                counts["same_shape_wrong_texture"] += n
            elif (pred - first) % 3 == gt_texture:
                counts["same_texture_wrong_shape"] += n
            else:
                counts["other_object"] += n
    total = max(sum(counts.values()), 1)
    return {k: round(100.0 * v / total, 1) for k, v in counts.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--weights", default="", help="checkpoint (default: RUN_DIR/model_final.pth)")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--root", default=None, help=f"dataset folder (default: {default_shared_root()})")
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    from simformer.engine.predictor import Predictor
    from simformer.tools.predict import build_cfg

    cfg = build_cfg(os.path.join(args.run_dir, "config.yaml"), [])
    weights = args.weights or os.path.join(args.run_dir, "model_final.pth")
    predictor = Predictor(cfg, weights, device="cpu")
    root = args.root or default_shared_root()
    images = sorted(glob.glob(os.path.join(root, "images", args.split, "*.png")))
    if not images:
        raise FileNotFoundError(f"no images in {os.path.join(root, 'images', args.split)}: generate the dataset first (python -m simformer.data.datasets.synthetic_shared)")
    k = len(SHARED_CLASSES)
    conf = np.zeros((k, k), np.int64)
    for path in images:
        label = read_label_file(path.replace(os.sep + "images" + os.sep, os.sep + "labels" + os.sep))
        pred = predictor([read_image_file(path, "RGB")])[0]
        conf += confusion_matrix(pred, label, k, ignore_label=255)[:k, :k].T  # rows: ground truth
    inter = np.diag(conf).astype(np.float64)
    iou = inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)
    groups = object_pixel_groups(conf)
    print("IoU: " + ", ".join(f"{name} {100 * v:.1f}" for name, v in zip(SHARED_CLASSES, iou)) + f"; mIoU {100 * iou.mean():.1f}")
    rows = 100.0 * conf / np.maximum(conf.sum(1, keepdims=True), 1)
    short = [name[:11] for name in SHARED_CLASSES]
    print("row-normalised confusion (%), ground truth rows x predicted columns")
    print(" " * 12 + "".join(f"{n:>12}" for n in short))
    for name, row in zip(short, rows):
        print(f"{name:>12}" + "".join(f"{v:12.0f}" for v in row))
    print("object pixels (%): " + ", ".join(f"{g} {v}" for g, v in groups.items()))
    if args.json:
        out = {"run_dir": args.run_dir, "weights": weights, "split": args.split, "mIoU": round(100 * iou.mean(), 1),
               "iou": {n: round(100 * v, 1) for n, v in zip(SHARED_CLASSES, iou)}, "object_pixels": groups,
               "confusion": conf.tolist()}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
