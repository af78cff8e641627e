"""Predict semantic segmentation of images with a trained simformer model.

    simformer-predict --config-file configs/synthetic/maskformer_R18_weakshot.yaml \\
        --weights output/synthetic/maskformer_R18_weakshot/model_final.pth \\
        --input photo.jpg more/*.png some_folder/ --output predictions/ [--gt labels_folder/] \\
        [--device cuda] [--batch-size 8] [--opts INPUT.MIN_SIZE_TEST 512]
    python -m simformer.tools.predict ...        # the same, without the console script
    simformer-predict --onnx model.onnx --input ... --output ...   # a model exported by simformer-export:
                                                 # onnxruntime + NumPy only (no detectron2, no torch)

``--input`` takes image files, folders (their image files, sorted; ``--recursive`` for sub-folders) and
glob patterns (quote them to let this tool expand ``**``). For every image ``<stem>`` it writes into
``--output``:

    <stem>_label.png     predicted train ids (0..K-1) at the image's own size (16-bit PNG when K > 256)
    <stem>_overlay.png   [image | prediction] with a legend of the classes present (novel classes of a
                         weak-shot dataset marked "*" and framed)
    <stem>_vs_gt.png     [image | ground truth | prediction], when ``--gt`` gives a label file for it

plus ``summary.json``. Images of any size and mode are accepted (grayscale, palette, RGBA / LA composited
over white, 16-bit, CMYK; EXIF orientation applied, as the label is then aligned with the image as
displayed), read by the same reader as training and evaluation (``simformer.data.image_io``). Images are resized as at test time (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and the
scores resized back; a forward pass batches only images of the same input size, so labels do not depend
on ``--batch-size``. Unreadable files are reported and skipped; the rest are processed. Exit status: 0 when every
image was done, 1 when some failed, 2 when there was nothing to do or an argument was wrong.
"""
import argparse
import glob
import json
import logging
import os
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.image_io import IMAGE_EXTENSIONS, read_image_file, read_label_file

__all__ = ["expand_inputs", "load_image", "upsample_argmax", "Predictor", "main"]


def __getattr__(name):
    """``Predictor`` / ``upsample_argmax`` (the one predictor, re-exported) are imported on first use, so
    the ``--onnx`` path never imports detectron2 or torch."""
    if name in ("Predictor", "upsample_argmax"):
        from ..engine import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

logger = logging.getLogger("simformer.predict")


# ----------------------------------------------------------------------------------------------- inputs
def expand_inputs(items: Sequence[str], recursive: bool = False) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Files, folders and glob patterns -> (image paths in order without duplicates, [(item, error)]).

    Folder contents and glob matches are filtered to image extensions; a path named explicitly is kept
    whatever its name (a missing one is reported when it is read)."""
    paths, errors, seen = [], [], set()

    def add(p):
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for item in items:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
                found += [os.path.join(root, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                errors.append((item, "folder has no image files (" + ", ".join(IMAGE_EXTENSIONS) + ")"))
            for p in sorted(found):
                add(p)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                errors.append((item, "pattern matches no image file"))
            for p in found:
                add(p)
        else:
            add(item)
    return paths, errors


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image (unknown format or corrupt file)"
    if isinstance(exc, OSError) and "truncat" in str(exc).lower():
        return f"corrupt or truncated image data ({exc})"
    return f"{type(exc).__name__}: {exc}"


def load_image(path: str) -> Tuple[np.ndarray, Dict]:
    """(H, W, 3) uint8 RGB as displayed, read by the one image reader of training and evaluation
    (:func:`simformer.data.image_io.read_image_file`: EXIF orientation, transparency over white, 16-bit by
    the high byte), and ``{"mode", "size" (W, H) as stored, "exif_rotated"[, "frames"]}``."""
    info = {}
    image = read_image_file(path, "RGB", info=info)
    return np.ascontiguousarray(image), info


def read_label(path: str) -> np.ndarray:
    """A label PNG of class ids as (H, W) int64 (the one label reader)."""
    return read_label_file(path)


def match_labels(images: Sequence[str], gt: Optional[Sequence[str]]) -> Dict[str, str]:
    """image path -> label path: ``gt`` is one folder (labels found by file stem, ``.png`` preferred) or
    a list of label files paired in order with the images."""
    if not gt:
        return {}
    if len(gt) == 1 and os.path.isdir(gt[0]):
        by_stem = {}
        for f in sorted(os.listdir(gt[0]), key=lambda f: (not f.lower().endswith(".png"), f)):
            stem = os.path.splitext(f)[0]
            if f.lower().endswith(IMAGE_EXTENSIONS):
                by_stem.setdefault(stem, os.path.join(gt[0], f))
        return {p: by_stem[s] for p in images for s in [os.path.splitext(os.path.basename(p))[0]] if s in by_stem}
    if len(gt) != len(images):
        raise ValueError(f"--gt: got {len(gt)} label files for {len(images)} images; give one label file per image (same order) or one folder")
    return dict(zip(images, gt))


# ----------------------------------------------------------------------------------------------- outputs
def write_label_png(path: str, label: np.ndarray) -> None:
    dtype = np.uint8 if label.max(initial=0) <= 255 else np.uint16
    Image.fromarray(label.astype(dtype)).save(path)


def _fit_for_vis(image: np.ndarray, labels: List[Optional[np.ndarray]], max_size: int, min_size: int = 128):
    """Resize an image (area / nearest) and its label maps (nearest) for display: the longer side at
    most ``max_size`` (0 = no limit), small images enlarged towards ``min_size`` on the shorter side."""
    h, w = image.shape[:2]
    s = max(1.0, min_size / min(h, w))
    if max_size > 0:
        s = min(s, max_size / max(h, w))
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    if (nh, nw) == (h, w):
        return image, labels
    import cv2

    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    labels = [None if lab is None else cv2.resize(lab.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(np.int64) for lab in labels]
    return image, labels


def _unique_stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, n = stem, 1
    while name in used:
        name, n = f"{stem}_{n}", n + 1
    used.add(name)
    return name


def _class_display(cfg, dataset: Optional[str]):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..engine.visualize import display_info

    k = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    candidates = [dataset] if dataset else list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    registered = set(DatasetCatalog.list())
    for name in candidates:
        if name in registered and MetadataCatalog.get(name).get("stuff_classes", None) is not None:
            meta = MetadataCatalog.get(name)
            if len(meta.stuff_classes) != k:
                logger.warning(f"dataset {name!r} has {len(meta.stuff_classes)} classes, the model {k}")
            return (name,) + tuple(display_info(meta, k))
    if dataset:
        raise ValueError(f"--dataset {dataset!r} is not a registered dataset with 'stuff_classes' metadata")
    return (None,) + tuple(display_info(None, k))


def build_cfg(config_file: str, opts: Sequence[str]):
    from detectron2.config import get_cfg

    import simformer  # noqa: F401  (compatibility patches, registries)
    from simformer import add_simformer_config

    from ..utils.config_merge import merge_config

    cfg = get_cfg()
    add_simformer_config(cfg)
    merge_config(cfg, config_file, list(opts))
    cfg.freeze()
    return cfg


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simformer-predict",
        description="Semantic segmentation of images with a trained simformer model: label PNGs (train ids), colour overlays with a legend, optional comparison with ground truth.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--opts KEY VALUE ... (last) overrides the config, e.g. --opts INPUT.MIN_SIZE_TEST 512.",
    )
    p.add_argument("--config-file", metavar="FILE", help="the config the model was trained with (required unless --onnx)")
    p.add_argument("--weights", default=None, help="checkpoint (default: MODEL.WEIGHTS of the config)")
    p.add_argument("--onnx", default=None, metavar="MODEL.onnx", help="run a model exported by simformer-export with onnxruntime (needs MODEL.onnx.json beside it; no detectron2 / torch; --config-file, --weights, --tta, --device, --opts do not apply)")
    p.add_argument("--input", "-i", nargs="+", required=True, help="image files, folders, or glob patterns")
    p.add_argument("--output", "-o", required=True, help="output folder (created)")
    p.add_argument("--gt", nargs="+", default=None, help="ground-truth label PNGs: one folder (matched by file stem) or one file per input image, in order")
    p.add_argument("--dataset", default=None, help="registered dataset whose class names / colours / base-novel split to show (default: the config's first test dataset)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: the config's TEST.AUG.MIN_SIZES / MAX_SIZE / FLIP, score maps averaged")
    p.add_argument("--recursive", action="store_true", help="also take images from sub-folders of folder inputs")
    p.add_argument("--alpha", type=float, default=0.55, help="overlay opacity of the class colours")
    p.add_argument("--vis-max-size", type=int, default=1024, help="overlay panels: longer side at most this (0 = no limit), small images enlarged to 128 px; label PNGs keep the full size")
    p.add_argument("--no-overlay", action="store_true", help="write label PNGs only")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (must come last)")
    return p


def run(args) -> int:
    import cv2
    from tqdm import tqdm

    from ..utils.overlay import overlay_panel

    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    paths, input_errors = expand_inputs(args.input, recursive=args.recursive)
    for item, err in input_errors:
        print(f"error: {item}: {err}", file=sys.stderr)
    if not paths:
        print("error: no input images", file=sys.stderr)
        return 2
    try:
        gt_of = match_labels(paths, args.gt)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.gt and not gt_of:
        print(f"warning: no ground-truth label found for any input in {args.gt}", file=sys.stderr)
    os.makedirs(args.output, exist_ok=True)
    out_abs = os.path.abspath(args.output)

    t0 = time.perf_counter()
    if args.onnx:
        from ..deploy.onnx_predictor import OnnxPredictor

        try:
            predictor = OnnxPredictor(args.onnx)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: cannot load the model: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # onnxruntime's own errors (invalid model file, ...)
            print(f"error: cannot load the model: {args.onnx}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        names, colors, ignore, groups = predictor.display_info()
        dataset, config_file, weights = predictor.meta.get("dataset"), None, args.onnx
    else:
        from ..engine.predictor import Predictor

        cfg = build_cfg(args.config_file, list(args.opts) + (["TEST.AUG.ENABLED", "True"] if args.tta else []))
        weights = args.weights or cfg.MODEL.WEIGHTS
        if not weights:
            print("error: no weights: pass --weights or set MODEL.WEIGHTS", file=sys.stderr)
            return 2
        try:
            predictor = Predictor(cfg, weights, args.device)
        except (FileNotFoundError, RuntimeError, ValueError) as e:
            print(f"error: cannot load the model: {e}", file=sys.stderr)
            return 2
        dataset, names, colors, ignore, groups = _class_display(cfg, args.dataset)
        config_file = args.config_file
    t_model = time.perf_counter() - t0

    records: List[Dict] = [{"input": p} for p in paths]
    used: set = set()
    pixels = Counter()
    correct = total = 0
    bar = tqdm(total=len(paths), unit="img", desc="predict", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)

    def fail(rec, msg):
        rec["error"] = msg
        bar.write(f"error: {rec['input']}: {msg}", file=sys.stderr)

    def finish(rec, image, pred):
        nonlocal correct, total
        name = rec["name"]
        rec["outputs"] = {"label": os.path.join(args.output, f"{name}_label.png")}
        write_label_png(rec["outputs"]["label"], pred)
        ids, counts = np.unique(pred, return_counts=True)
        rec["classes"] = {names[i] if 0 <= i < len(names) else str(i): int(c) for i, c in zip(ids.tolist(), counts.tolist())}
        pixels.update(rec["classes"])
        gt = None
        if rec["input"] in gt_of:
            try:
                gt = read_label(gt_of[rec["input"]])
                if gt.shape != pred.shape:
                    raise ValueError(f"label size {gt.shape[1]}x{gt.shape[0]} differs from the image's {pred.shape[1]}x{pred.shape[0]}")
                valid = gt != ignore
                rec["gt"] = gt_of[rec["input"]]
                rec["pixel_accuracy"] = float((pred[valid] == gt[valid]).mean() * 100) if valid.any() else None
                correct += int((pred[valid] == gt[valid]).sum())
                total += int(valid.sum())
            except Exception as e:  # the prediction itself is fine: report, keep going
                rec["gt_error"] = f"{gt_of[rec['input']]}: {_describe_error(e) if isinstance(e, OSError) else e}"
                bar.write(f"warning: {rec['input']}: ground truth skipped: {rec['gt_error']}", file=sys.stderr)
                gt = None
        if not args.no_overlay:
            vis, (vp, vg) = _fit_for_vis(image, [pred, gt], args.vis_max_size)
            path = os.path.join(args.output, f"{name}_overlay.png")
            cv2.imwrite(path, overlay_panel(vis, vp, names, colors, ignore_label=ignore, alpha=args.alpha, groups=groups)[:, :, ::-1])
            rec["outputs"]["overlay"] = path
            if vg is not None:
                path = os.path.join(args.output, f"{name}_vs_gt.png")
                cv2.imwrite(path, overlay_panel(vis, vp, names, colors, gt=vg, ignore_label=ignore, alpha=args.alpha, groups=groups)[:, :, ::-1])
                rec["outputs"]["vs_gt"] = path

    def process(batch):
        try:
            preds = predictor.predict_prepared([x for _, _, x in batch], [im.shape[:2] for _, im, _ in batch])
        except Exception as e:
            if len(batch) == 1:
                fail(batch[0][0], f"inference failed: {type(e).__name__}: {e}")
                bar.update(1)
                return
            for one in batch:  # e.g. out of memory on a large batch: retry image by image
                process([one])
            return
        for (rec, image, _), pred in zip(batch, preds):
            try:
                finish(rec, image, pred)
            except Exception as e:
                fail(rec, f"writing outputs failed: {type(e).__name__}: {e}")
            bar.update(1)

    t1 = time.perf_counter()
    pending: Dict[tuple, list] = {}  # input shape -> [(record, image, model input)]: batches of one size
    for rec in records:
        rec["name"] = _unique_stem(rec["input"], used)  # names in input order, whatever the batching
    for rec in records:
        src = os.path.abspath(rec["input"])
        if os.path.dirname(src) == out_abs and os.path.basename(src).endswith(("_label.png", "_overlay.png", "_vs_gt.png")):
            fail(rec, "skipped: an output of this tool")
            bar.update(1)
            continue
        try:
            image, info = load_image(rec["input"])
            rec.update(info)
            x = predictor.prepare(image)
        except Exception as e:
            fail(rec, _describe_error(e))
            bar.update(1)
            continue
        group = pending.setdefault(tuple(x["image"].shape), [])
        group.append((rec, image, x))
        if len(group) == args.batch_size:
            process(pending.pop(tuple(x["image"].shape)))
        elif sum(len(g) for g in pending.values()) >= 4 * args.batch_size:  # many sizes: bound the memory
            for key in list(pending):
                process(pending.pop(key))
    for key in list(pending):
        process(pending.pop(key))
    bar.close()
    elapsed = time.perf_counter() - t1

    done = [r for r in records if "error" not in r]
    failed = [r for r in records if "error" in r]
    summary = {
        "config": config_file, "weights": weights, "device": predictor.device, "dataset": dataset,
        "done": len(done), "failed": len(failed), "seconds": round(elapsed, 3), "model_load_seconds": round(t_model, 3),
        "input_errors": [{"input": i, "error": e} for i, e in input_errors], "images": records,
    }
    if total:
        summary["pixel_accuracy"] = correct / total * 100
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    rate = f"{len(done) / elapsed:.1f} img/s" if elapsed > 0 and done else "-"
    print(f"Predicted {len(done)} of {len(records)} images in {elapsed:.1f} s ({rate}, {predictor.device}, batch {args.batch_size}) -> {args.output}")
    if failed or input_errors:
        print(f"Failed ({len(failed) + len(input_errors)}):")
        for item, err in input_errors:
            print(f"  {item}: {err}")
        for r in failed:
            print(f"  {r['input']}: {r['error']}")
    if pixels:
        tot = sum(pixels.values())
        novel = {names[i] for i in groups.get("novel", []) if i < len(names)}
        shares = ", ".join(f"{n}{' *' if n in novel else ''} {c / tot * 100:.1f}%" for n, c in pixels.most_common())
        print(f"Predicted classes (share of pixels{', * = novel' if novel else ''}): {shares}")
    n_gt = sum("pixel_accuracy" in r for r in records)
    if n_gt:
        print(f"Against ground truth ({n_gt} images): pixel accuracy {correct / max(total, 1) * 100:.1f}%")
    print("Outputs per image: <stem>_label.png (train ids)" + ("" if args.no_overlay else ", <stem>_overlay.png" + (", <stem>_vs_gt.png" if n_gt else "")) + "; summary.json")
    return 1 if failed or input_errors else 0


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.onnx and not args.config_file:
        parser.error("--config-file is required (unless --onnx)")
    if args.onnx and (args.config_file or args.weights or args.tta or args.opts):
        parser.error("--onnx runs the exported model as it is: --config-file, --weights, --tta and --opts do not apply")
    if len(args.opts) % 2:
        print(f"error: config overrides must be KEY VALUE pairs, got {args.opts}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
