#!/usr/bin/env python
"""How many image-level novel tags a pseudo-label folder loses, and what their pixels become.

    python benchmarks/lost_tags.py PSEUDO_LABEL_DIR [...] [--dataset synthetic_ws_train] [--json OUT]

Retraining on pseudo-labels (spec §5.5) keeps only the classes the pseudo-labels contain: a novel class
tagged on an image but given no pseudo-labelled pixel loses its image-level label. For each folder:
``tagged`` (image, tagged novel class) pairs, ``lost`` (those with no pixel of that class), the median
ground-truth size of the lost ones, and where the lost classes' ground-truth pixels went in the
pseudo-labels: ignore (255: in retraining a negative for every mask), another novel class, or a base class.
The dataset must have ground truth for the novel classes (a simulated weak-shot split).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lost_tag_counts(pseudo: np.ndarray, truth: np.ndarray, tags, novel_ids, ignore: int = 255) -> dict:
    """One image: (H, W) pseudo-label and ground truth, its novel tags. Returns ``tagged``, ``lost``,
    ``lost_sizes`` (ground-truth pixels of each lost class) and the lost classes' ground-truth pixel counts
    by pseudo-label kind (``ignore``, ``other_novel``, ``base``)."""
    out = {"tagged": 0, "lost": 0, "lost_sizes": [], "ignore": 0, "other_novel": 0, "base": 0}
    novel = np.asarray(list(novel_ids))
    for c in sorted(set(tags)):
        out["tagged"] += 1
        if (pseudo == c).any():
            continue
        out["lost"] += 1
        v = pseudo[truth == c]
        out["lost_sizes"].append(int(v.size))
        out["ignore"] += int((v == ignore).sum())
        is_novel = np.isin(v, novel)
        out["other_novel"] += int(is_novel.sum())
        out["base"] += int(((v != ignore) & ~is_novel).sum())
    return out


def summarise(per_image) -> dict:
    tot = {k: 0 for k in ("tagged", "lost", "ignore", "other_novel", "base")}
    sizes = []
    for c in per_image:
        for k in tot:
            tot[k] += c[k]
        sizes += c["lost_sizes"]
    px = max(tot["ignore"] + tot["other_novel"] + tot["base"], 1)
    return {"tagged": tot["tagged"], "lost": tot["lost"], "lost_percent": round(100.0 * tot["lost"] / max(tot["tagged"], 1), 2),
            "median_gt_pixels_of_lost": float(np.median(sizes)) if sizes else None,
            "lost_pixels_percent": {k: round(100.0 * tot[k] / px, 1) for k in ("ignore", "other_novel", "base")}}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="pseudo-label folders (<stem>.png per training image)")
    parser.add_argument("--dataset", default="synthetic_ws_train", help="registered weak-shot training split with novel ground truth")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    from detectron2.data import DatasetCatalog, MetadataCatalog

    import simformer.data.datasets  # noqa: F401  (registers the built-in datasets)
    from simformer.data.image_io import read_label_file
    from simformer.evaluation.pseudo_labels import pseudo_label_path

    records = DatasetCatalog.get(args.dataset)
    meta = MetadataCatalog.get(args.dataset)
    novel, ignore = list(meta.novel_class_ids), meta.get("ignore_label", 255)
    results = {}
    for folder in args.folders:
        per_image = []
        for r in records:
            if "novel_tags" not in r:
                raise KeyError(f"{args.dataset}: record {r['file_name']} has no 'novel_tags' (not a weak-shot split)")
            pseudo = read_label_file(pseudo_label_path(folder, r["sem_seg_file_name"]))
            per_image.append(lost_tag_counts(pseudo, read_label_file(r["sem_seg_file_name"]), r["novel_tags"], novel, ignore))
        results[folder] = summarise(per_image)
        print(folder, json.dumps(results[folder]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "folders": results}, f, indent=1)


if __name__ == "__main__":
    main()
