"""``simformer-tags``: make, check and audit the image-level tags of a weak-shot dataset.

    simformer-tags make  --labels LABEL_DIR --classes classes.txt --novel giraffe zebra --output tags.json
                         [--base-only-labels OUT_DIR]          # tags from full label maps (simulated weak-shot)
    simformer-tags check tags.json --classes classes.txt [--novel ...] [--images IMAGE_DIR]
    simformer-tags audit --config-file CFG --weights W.pth --dataset NAME --output DIR [--top 20]
    python -m simformer.tools.tags ...                         # the same, without the console script

``--classes``: a text file with one class name per line (line i = train id i), or ``--dataset NAME`` of a
registered dataset (its class list, novel classes and, for ``check``, its images and tags).

* ``make`` writes ``{image stem: [novel class names present]}`` from label PNGs that hold every class, and
  with ``--base-only-labels`` copies of the labels with the novel pixels set to ignore: the files of a real
  weak-shot dataset (``register_real_weakshot``), made from fully labelled data.
* ``check`` reads a tags file (JSON / CSV / one-hot CSV, ``--threshold``, see
  :func:`~simformer.data.datasets.weakshot.read_tags_file`) and prints per class the images tagged, the
  images without any tag, tags of unknown classes (with close names) and, with ``--images``, images
  without an entry and entries without an image. Exit 1 when something is wrong, 0 otherwise.
* ``audit`` runs a trained model on the dataset's images and ranks them by how much its predicted novel
  classes disagree with their tags: a tagged class it predicts on fewer than ``--min-fraction`` of the
  pixels (a wrong tag, or a class the model misses) and an untagged novel class it predicts on more (a
  missing tag); writes ``audit.json`` / ``audit.csv`` and overlays of the ``--top`` images, so the likely
  missing or wrong tags can be looked at.
"""
import argparse
import csv
import difflib
import json
import os
import sys
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["main", "make_tags", "check_tags", "audit_scores"]


def _read_classes(path: str) -> List[str]:
    with open(path) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"classes file '{path}' lists no class (one name per line)")
    return names


def _class_info(args):
    """(class names, novel ids or None) from --classes / --dataset (+ --novel)."""
    from simformer.data.datasets.weakshot import resolve_class_ids

    novel = None
    if getattr(args, "dataset", None):
        from detectron2.data import MetadataCatalog

        import simformer  # noqa: F401  (registers the built-in datasets)

        meta = MetadataCatalog.get(args.dataset)
        names = meta.get("stuff_classes", None)
        if names is None:
            raise ValueError(f"--dataset '{args.dataset}' is not a registered dataset with a class list")
        novel = meta.get("novel_class_ids", None)
    elif getattr(args, "classes", None):
        names = _read_classes(args.classes)
    else:
        raise ValueError("give the classes: --classes FILE (one name per line) or --dataset NAME")
    if getattr(args, "novel", None):
        novel = resolve_class_ids(args.novel, names, "--novel")
    return list(names), (list(novel) if novel is not None else None)


# ------------------------------------------------------------------------------------------------ make
def make_tags(label_dir: str, class_names: Sequence[str], novel_ids: Sequence[int], ignore_label: int = 255, base_only_dir: Optional[str] = None) -> Dict[str, List[str]]:
    """``{stem: [novel class names present]}`` of every label PNG in ``label_dir``; with ``base_only_dir``
    also writes the labels with novel pixels = ``ignore_label`` there."""
    from PIL import Image

    from simformer.data.datasets.weakshot import label_presence
    from simformer.data.image_io import read_label_file

    files = sorted(os.path.join(label_dir, f) for f in os.listdir(label_dir) if f.lower().endswith(".png") and not f.startswith("."))
    if not files:
        raise FileNotFoundError(f"label folder '{label_dir}' has no .png files")
    presence = label_presence(files, len(class_names), ignore_label)
    novel = sorted(int(c) for c in novel_ids)
    tags = {os.path.splitext(os.path.basename(f))[0]: [class_names[c] for c in novel if presence[i, c]] for i, f in enumerate(files)}
    if base_only_dir:
        os.makedirs(base_only_dir, exist_ok=True)
        is_novel = np.zeros(max(len(class_names), ignore_label + 1), dtype=bool)
        is_novel[novel] = True
        for f in files:
            label = read_label_file(f)
            label[is_novel[label.clip(max=len(is_novel) - 1)]] = ignore_label
            Image.fromarray(label.astype(np.uint8 if label.max(initial=0) <= 255 else np.uint16)).save(os.path.join(base_only_dir, os.path.basename(f)))
    return tags


# ------------------------------------------------------------------------------------------------ check
def check_tags(tags: Dict[str, List[str]], class_names: Sequence[str], novel_ids: Optional[Sequence[int]] = None, image_stems: Optional[Sequence[str]] = None) -> Dict:
    """Statistics and problems of a tags dict (see the module doc); ``problems`` empty = fine."""
    known = set(class_names)
    novel_names = {class_names[c] for c in novel_ids} if novel_ids is not None else None
    per_class = Counter(n for names in tags.values() for n in names)
    problems = []
    for name in sorted(n for n in per_class if n not in known):
        close = difflib.get_close_matches(name, list(class_names), n=2)
        problems.append(f"unknown class '{name}' tagged on {per_class[name]} image(s)" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
    if novel_names is not None:
        for name in sorted(n for n in per_class if n in known and n not in novel_names):
            problems.append(f"'{name}' is a base class but tagged on {per_class[name]} image(s): tags name novel classes only")
    report = {
        "images": len(tags),
        "images_without_tags": sorted(s for s, names in tags.items() if not names),
        "tags_per_class": {n: per_class.get(n, 0) for n in (sorted(novel_names, key=list(class_names).index) if novel_names else class_names)},
        "unknown_classes": sorted(n for n in per_class if n not in known),
    }
    if image_stems is not None:
        stems = set(image_stems)
        report["images_without_entry"] = sorted(stems - set(tags))
        report["entries_without_image"] = sorted(set(tags) - stems)
        if report["entries_without_image"]:
            problems.append(f"{len(report['entries_without_image'])} tagged image(s) are not in the image folder, e.g. {report['entries_without_image'][:3]}")
    if novel_names:
        never = [n for n in novel_names if per_class.get(n, 0) == 0]
        if never:
            problems.append(f"novel classes never tagged: {sorted(never)} (they get no training signal)")
    report["problems"] = problems
    return report


# ------------------------------------------------------------------------------------------------ audit
def audit_scores(fractions: np.ndarray, tagged: np.ndarray, min_fraction: float) -> np.ndarray:
    """Disagreement per image from the predicted pixel fraction of each novel class (N, n) and the tags
    (N, n) bool: sum over untagged classes of the fraction predicted beyond ``min_fraction`` (a missing tag)
    plus, over tagged classes, how far below ``min_fraction`` the prediction stays, in [0, 1] (a wrong tag
    or a miss)."""
    missing = np.where(~tagged, np.clip(fractions - min_fraction, 0, None) / max(1e-9, 1 - min_fraction), 0.0)
    wrong = np.where(tagged, np.clip(1 - fractions / min_fraction, 0, 1), 0.0)
    return (missing + wrong).sum(axis=1)


def _audit(args) -> int:
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from tqdm import tqdm

    from simformer.data.image_io import read_image_file
    from simformer.engine.predictor import Predictor
    from simformer.tools.predict import build_cfg
    from simformer.utils.overlay import display_info, overlay_panel

    cfg = build_cfg(args.config_file, args.opts)
    meta = MetadataCatalog.get(args.dataset)
    novel = list(meta.get("novel_class_ids", None) or [])
    if not novel:
        raise ValueError(f"dataset '{args.dataset}' has no novel classes (novel_class_ids): nothing to audit")
    names, colors, ignore, groups = display_info(meta, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    dicts = DatasetCatalog.get(args.dataset)
    predictor = Predictor(cfg, args.weights, args.device)
    os.makedirs(args.output, exist_ok=True)
    fractions, tagged = [], []
    for d in tqdm(dicts, desc="audit", unit="img", file=sys.stderr):  # label maps are not kept: memory stays flat
        pred = predictor([read_image_file(d["file_name"], "RGB")])[0]
        counts = np.bincount(pred.ravel(), minlength=len(names))
        fractions.append(counts[novel] / pred.size)
        tagged.append(np.isin(novel, d.get("novel_tags", [])))
    fractions, tagged = np.array(fractions), np.array(tagged)
    scores = audit_scores(fractions, tagged, args.min_fraction)
    order = np.argsort(-scores, kind="stable")
    rows = []
    for rank, i in enumerate(order):
        d = dicts[i]
        tags = [names[c] for c, t in zip(novel, tagged[i]) if t]
        predicted = [names[c] for c, f in zip(novel, fractions[i]) if f >= args.min_fraction]
        row = {"rank": rank + 1, "image": d["file_name"], "score": round(float(scores[i]), 4), "tags": tags, "predicted_novel": predicted,
               "likely_missing_tags": sorted(set(predicted) - set(tags)), "tags_not_predicted": sorted(set(tags) - set(predicted)),
               "novel_fractions": {names[c]: round(float(f), 4) for c, f in zip(novel, fractions[i])}}  # fmt: skip
        if rank < args.top and scores[i] > 0:
            image = read_image_file(d["file_name"], "RGB")  # the --top images are predicted again to draw them
            panel = overlay_panel(image, predictor([image])[0], names, colors, ignore_label=ignore, groups=groups)
            path = os.path.join(args.output, f"{rank + 1:03d}_{d['image_id']}.png")
            cv2.imwrite(path, panel[:, :, ::-1])
            row["overlay"] = path
        rows.append(row)
    with open(os.path.join(args.output, "audit.json"), "w") as f:
        json.dump({"dataset": args.dataset, "min_fraction": args.min_fraction, "images": rows}, f, indent=1)
    with open(os.path.join(args.output, "audit.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "image", "score", "tags", "predicted_novel", "likely_missing_tags", "tags_not_predicted"])
        for r in rows:
            w.writerow([r["rank"], r["image"], r["score"], ";".join(r["tags"]), ";".join(r["predicted_novel"]), ";".join(r["likely_missing_tags"]), ";".join(r["tags_not_predicted"])])
    flagged = [r for r in rows if r["score"] > 0]
    print(f"Audited {len(rows)} images of {args.dataset}: {len(flagged)} disagree with their tags (min fraction {args.min_fraction}); report {args.output}/audit.csv")
    for r in flagged[: min(10, args.top)]:
        print(f"  {r['rank']:3d}. {os.path.basename(r['image'])}  score {r['score']:.2f}  missing tags {r['likely_missing_tags']}  tags not predicted {r['tags_not_predicted']}")
    return 0


# ------------------------------------------------------------------------------------------------ cli
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simformer-tags", description="Make, check and audit image-level tags of a weak-shot dataset.", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="tags (and base-only labels) from full label maps")
    m.add_argument("--labels", required=True, help="folder of label PNGs with every class (train ids, 255 = ignore)")
    m.add_argument("--classes", help="text file, one class name per line")
    m.add_argument("--dataset", help="registered dataset whose class list to use")
    m.add_argument("--novel", nargs="+", required=True, help="novel class names or ids")
    m.add_argument("--ignore", type=int, default=255)
    m.add_argument("--output", required=True, help="tags file to write (.json)")
    m.add_argument("--base-only-labels", default=None, help="also write the labels with novel pixels = ignore into this folder")
    c = sub.add_parser("check", help="statistics and problems of a tags file")
    c.add_argument("tags", help="tags file (.json / .csv)")
    c.add_argument("--classes")
    c.add_argument("--dataset")
    c.add_argument("--novel", nargs="+", default=None)
    c.add_argument("--images", default=None, help="image folder: report images without an entry and entries without an image")
    c.add_argument("--threshold", type=float, default=0.5, help="score threshold of scored / one-hot tags")
    a = sub.add_parser("audit", help="rank images by disagreement between a model's predicted novel classes and their tags")
    a.add_argument("--config-file", required=True)
    a.add_argument("--weights", required=True)
    a.add_argument("--dataset", required=True, help="registered weak-shot dataset (its images and novel_tags)")
    a.add_argument("--output", required=True)
    a.add_argument("--top", type=int, default=20, help="overlays of the most disagreeing images")
    a.add_argument("--min-fraction", type=float, default=0.01, help="a class counts as predicted on at least this fraction of the pixels")
    a.add_argument("--device", default="auto")
    a.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.command == "make":
            names, novel = _class_info(args)
            tags = make_tags(args.labels, names, novel, args.ignore, args.base_only_labels)
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            with open(args.output, "w") as f:
                json.dump(tags, f, indent=0)
            counts = Counter(n for v in tags.values() for n in v)
            print(f"Tags of {len(tags)} images -> {args.output}; images per novel class: {dict(counts)}" + (f"; base-only labels in {args.base_only_labels}" if args.base_only_labels else ""))
            return 0
        if args.command == "check":
            from simformer.data.datasets.weakshot import read_tags_file
            from simformer.data.image_io import IMAGE_EXTENSIONS

            names, novel = _class_info(args)
            tags = read_tags_file(args.tags, threshold=args.threshold)
            stems = None
            if args.images:
                stems = [os.path.splitext(f)[0] for f in os.listdir(args.images) if f.lower().endswith(IMAGE_EXTENSIONS)]
            report = check_tags(tags, names, novel, stems)
            print(f"{args.tags}: {report['images']} images, {len(report['images_without_tags'])} without any tag")
            for n, k in report["tags_per_class"].items():
                print(f"  {n:<24} {k:6d} images ({k / max(1, report['images']) * 100:.1f} %)")
            if stems is not None:
                print(f"  images without an entry: {len(report['images_without_entry'])}; entries without an image: {len(report['entries_without_image'])}")
            for p in report["problems"]:
                print(f"problem: {p}")
            return 1 if report["problems"] else 0
        return _audit(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
