#!/usr/bin/env python
"""Convert ADE20K-150 (SceneParsing ``ADEChallengeData2016``) to the layouts of spec §7.2.

Input, the official ``ADEChallengeData2016.zip`` unpacked in SRC::

    SRC/images/{training,validation}/<stem>.jpg
    SRC/annotations/{training,validation}/<stem>.png    0 = other, 1..150 = SceneParse150 classes

Output in DST (default: SRC). Labels are written once, in the SimFormer layout; every other name is
an alias (a relative symlink, or a real copy with ``--copy`` for file systems without symlinks)::

    DST/annotations_detectron2/{train,test}/<stem>.png   uint8 train ids: 0 -> 255, 1..150 -> 0..149
    DST/images_detectron2/{train,test}       -> SRC/images/{training,validation}
    DST/annotations_detectron2/{training,validation} -> {train,test}   (MaskFormer's layout)

``train`` is the 20,210-image training set and ``test`` the 2,000-image validation set. An
annotation value above 150 is an error naming the file. Re-running skips labels that are already
valid and rewrites the others; ``--keep-going`` converts past bad inputs and lists them at the end.

    python datasets/prepare_ade20k_sem_seg.py [--src DIR] [--dst DIR] [--copy] [--workers N] [--keep-going]
"""
import os
import sys

import numpy as np
from PIL import Image

from simformer.data.prepare import (
    IGNORE,
    ConversionError,
    base_parser,
    copy_if_needed,
    image_size,
    resolve_dirs,
    run_conversion,
    save_label,
    valid_label_histogram,
)
from simformer.data.datasets.splits import ADE20K_150_CLASSES

NUM_CLASSES = 150
SPLITS = {"training": "train", "validation": "test"}  # official name -> SimFormer name


def convert_ade(job):
    """Convert one image: ``job = (image_src, annotation_src, label_dst, copies)``.

    ``copies`` are (src, dst) pairs made after the label is written (``--copy`` mode).
    """
    image_src, annotation_src, label_dst, copies = job
    if not os.path.isfile(image_src):
        raise ConversionError(f"{image_src}: image of annotation {annotation_src} is missing")
    width, height = image_size(image_src)
    status = "skipped"
    hist = valid_label_histogram(label_dst, (width, height), NUM_CLASSES)
    if hist is None:
        if not os.path.isfile(annotation_src):
            raise ConversionError(f"{annotation_src}: annotation of image {image_src} is missing")
        try:
            with Image.open(annotation_src) as annotation:
                raw = np.asarray(annotation)
        except OSError as e:
            raise ConversionError(f"{annotation_src}: cannot read annotation ({e})") from e
        if raw.ndim != 2 or raw.dtype.kind not in "ui":
            raise ConversionError(
                f"{annotation_src}: expected a single-channel integer PNG, got shape {raw.shape} {raw.dtype}"
            )
        if raw.shape != (height, width):
            raise ConversionError(
                f"{annotation_src}: annotation is {raw.shape[1]}x{raw.shape[0]} (WxH) "
                f"but image {image_src} is {width}x{height}"
            )
        bad = np.unique(raw[raw > NUM_CLASSES])
        if len(bad):
            raise ConversionError(f"{annotation_src}: values {bad[:10].tolist()} above {NUM_CLASSES} (expected 0..150)")
        label = raw.astype(np.int64) - 1
        label[label < 0] = IGNORE
        hist = save_label(label.astype(np.uint8), label_dst)
        status = "converted"
    for src, dst in copies:
        if copy_if_needed(src, dst):
            status = "converted"
    return status, hist


def ensure_alias(link, target, copy):
    """Make ``link`` a relative symlink to the folder ``target`` (or a real folder with ``copy``)."""
    if copy:
        if os.path.islink(link):
            raise ConversionError(f"{link}: is a symlink, but --copy wants a real folder; remove it first")
        os.makedirs(link, exist_ok=True)
        return
    if os.path.islink(link):
        if os.path.realpath(link) != os.path.realpath(target):
            raise ConversionError(f"{link}: symlink points to {os.readlink(link)}, expected {target}; remove it first")
        return
    if os.path.exists(link):
        raise ConversionError(
            f"{link}: exists as a real folder (an earlier --copy run?); rerun with --copy or remove it"
        )
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link, target_is_directory=True)


def ade_jobs(src, dst, copy):
    """One job per stem found among the images or annotations of each split; aliases made here."""
    jobs = []
    for official, name in SPLITS.items():
        image_dir = os.path.join(src, "images", official)
        annotation_dir = os.path.join(src, "annotations", official)
        for folder in (image_dir, annotation_dir):
            if not os.path.isdir(folder):
                raise ConversionError(f"{folder}: folder is missing (expected the ADEChallengeData2016 layout)")
        label_dir = os.path.join(dst, "annotations_detectron2", name)
        os.makedirs(label_dir, exist_ok=True)
        image_alias = os.path.join(dst, "images_detectron2", name)
        label_alias = os.path.join(dst, "annotations_detectron2", official)
        ensure_alias(image_alias, image_dir, copy)
        ensure_alias(label_alias, label_dir, copy)
        stems = {os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".jpg")}
        stems |= {os.path.splitext(f)[0] for f in os.listdir(annotation_dir) if f.endswith(".png")}
        for stem in sorted(stems):
            image_src = os.path.join(image_dir, f"{stem}.jpg")
            label_dst = os.path.join(label_dir, f"{stem}.png")
            copies = ()
            if copy:
                copies = (
                    (image_src, os.path.join(image_alias, f"{stem}.jpg")),
                    (label_dst, os.path.join(label_alias, f"{stem}.png")),
                )
            jobs.append((image_src, os.path.join(annotation_dir, f"{stem}.png"), label_dst, copies))
    return jobs


def main(argv=None):
    default_src = "ADEChallengeData2016"
    parser = base_parser(__doc__, default_src)
    parser.add_argument("--copy", action="store_true", help="copy images and labels instead of symlinking folders")
    args = parser.parse_args(argv)
    src, dst = resolve_dirs(args, default_src)
    try:
        jobs = ade_jobs(src, dst, args.copy)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run_conversion(
        jobs, convert_ade, ADE20K_150_CLASSES, "ade20k_sem_seg", workers=args.workers, keep_going=args.keep_going
    )


if __name__ == "__main__":
    sys.exit(main())
