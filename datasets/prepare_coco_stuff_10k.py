#!/usr/bin/env python
"""Convert COCO-Stuff-10K (release v1.1) to the detectron2 layout of spec §7.1.

Input, the official ``cocostuff-10k-v1.1.zip`` unpacked in SRC::

    SRC/images/<stem>.jpg
    SRC/annotations/<stem>.mat          label map ``S``: 0 = unlabeled, 1..182 = COCO category ids
    SRC/imageLists/{train,test}.txt     one stem per line (9,000 / 1,000)

Output in DST (default: SRC)::

    DST/images_detectron2/{train,test}/<stem>.jpg        copies
    DST/annotations_detectron2/{train,test}/<stem>.png   uint8 train ids 0..170, 255 = ignore

Train id = position of the COCO id in ``COCO_STUFF_171_COCO_IDS`` (things 0-79, stuff 80-170);
unlabeled (0), the 11 COCO ids COCO-Stuff never uses and anything > 182 become 255.

The v1.1 .mat files are MATLAB level-5 files (read with SciPy). MATLAB v7.3 (HDF5) files are read
with h5py when it is installed. The v1.0 release is HDF5 *and* encodes ``S`` differently (1 =
unlabeled, 2..172 = train id + 2; MaskFormer's script): for HDF5 files pass ``--release`` explicitly.

Re-running skips outputs that are already valid (a PNG of the image's size holding only valid ids,
an image copy of the right size) and rewrites the others. ``--keep-going`` converts past bad inputs
and lists them at the end; the exit code is non-zero whenever a file failed.

    python datasets/prepare_coco_stuff_10k.py [--src DIR] [--dst DIR] [--workers N] [--keep-going]

This module also holds the conversion driver (progress bar, resume, workers, summary) that
``prepare_ade20k_sem_seg.py`` imports.
"""
import argparse
import os
import shutil
import sys
import time
from collections import Counter
from multiprocessing import Pool

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from simformer.data.datasets.splits import COCO_STUFF_171_CLASSES, COCO_STUFF_171_COCO_IDS

IGNORE = 255
SPLITS = ("train", "test")
MAX_COCO_ID = 182


# ------------------------------------------------------------------------------------------------
# conversion driver, shared with prepare_ade20k_sem_seg.py
# ------------------------------------------------------------------------------------------------
class ConversionError(Exception):
    """A missing, unreadable or malformed input; the message names the file."""


def dataset_root():
    """``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def image_size(path):
    """(width, height) of an image, reading only its header."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: image is missing")
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as e:
        raise ConversionError(f"{path}: cannot read image ({e})") from e


def valid_label_histogram(path, size, num_classes):
    """Pixel histogram (256 bins) of an existing output label, or None if it is missing or invalid.

    Valid = a single-channel 8-bit PNG of ``size`` (width, height) holding only ids < num_classes or 255.
    """
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.mode != "L" or image.size != tuple(size):
                return None
            label = np.asarray(image)
    except (OSError, ValueError):
        return None
    hist = np.bincount(label.ravel(), minlength=256)
    return None if hist[num_classes:IGNORE].any() else hist


def save_label(label, path):
    """Write a uint8 label PNG atomically (temp file + rename); return its 256-bin histogram."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    Image.fromarray(label.astype(np.uint8, copy=False)).save(tmp, format="PNG")
    os.replace(tmp, path)
    return np.bincount(label.ravel(), minlength=256)


def copy_if_needed(src, dst):
    """Copy ``src`` to ``dst`` atomically unless a copy of the same size is there; True if copied."""
    if os.path.isfile(dst) and not os.path.islink(dst) and os.path.getsize(dst) == os.path.getsize(src):
        return False
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def _call(task):
    convert, job = task
    try:
        status, hist = convert(job)
        return status, hist, None
    except ConversionError as e:
        return "failed", None, str(e)


def run_conversion(jobs, convert, class_names, desc, workers=0, keep_going=False):
    """Run ``convert(job) -> ("converted" | "skipped", hist)`` over jobs and print a summary.

    ``convert`` raises :class:`ConversionError` for a bad input: the run stops there, or with
    ``keep_going`` continues and lists the failures. Returns the exit code (0, or 1 on failures).
    """
    start = time.perf_counter()
    counts, failures = Counter(), []
    hist = np.zeros(256, dtype=np.int64)
    tasks = [(convert, job) for job in jobs]
    pool = Pool(workers) if workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap_unordered(_call, tasks, chunksize=4) if pool else map(_call, tasks)
        with tqdm(total=len(tasks), desc=desc, unit="img", dynamic_ncols=True) as bar:
            for status, job_hist, error in results:
                bar.update()
                counts[status] += 1
                if job_hist is not None:
                    hist += job_hist
                if error is not None:
                    failures.append(error)
                    if not keep_going:
                        break
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    _print_summary(desc, len(tasks), counts, hist, class_names, failures, time.perf_counter() - start, keep_going)
    return 1 if failures else 0


def _print_summary(desc, total, counts, hist, class_names, failures, seconds, keep_going):
    done = counts["converted"] + counts["skipped"] + counts["failed"]
    print(f"{desc}: {done}/{total} images in {seconds:.1f} s")
    print(f"  converted {counts['converted']}, skipped (already valid) {counts['skipped']}, failed {counts['failed']}")
    pixels = hist.sum()
    if pixels:
        top = np.argsort(-hist[: len(class_names)], kind="stable")[:5]
        top = [f"{class_names[c].split(',')[0].strip()} ({c}) {hist[c] / pixels:.1%}" for c in top if hist[c]]
        print(f"  top-5 classes by pixels: {', '.join(top)}; ignore (255) {hist[IGNORE] / pixels:.1%}")
    if failures:
        print(f"  failed files ({len(failures)}):", file=sys.stderr)
        for message in failures:
            print(f"    {message}", file=sys.stderr)
        if not keep_going:
            print("  stopped at the first failure; --keep-going converts the remaining files", file=sys.stderr)


def base_parser(description, default_src):
    """The CLI options both scripts share; ``default_src`` is relative to ``$DETECTRON2_DATASETS``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help=f"raw dataset folder (default: $DETECTRON2_DATASETS/{default_src})")
    parser.add_argument("--dst", help="output folder (default: the --src folder)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (default 0: in-process)")
    parser.add_argument("--keep-going", action="store_true", help="convert past bad inputs and list them at the end")
    return parser


def resolve_dirs(args, default_src):
    src = args.src or os.path.join(dataset_root(), default_src)
    return src, args.dst or src


# ------------------------------------------------------------------------------------------------
# COCO-Stuff-10K
# ------------------------------------------------------------------------------------------------
def coco_lut():
    """Lookup table (184 entries) from a v1.1 ``S`` value (clipped to 183) to the train id."""
    ids = np.asarray(COCO_STUFF_171_COCO_IDS)
    if len(ids) != 171 or len(np.unique(ids)) != 171 or ids.min() < 1 or ids.max() > MAX_COCO_ID:
        raise ValueError("splits.COCO_STUFF_171_COCO_IDS must be 171 distinct COCO ids in 1..182")
    lut = np.full(MAX_COCO_ID + 2, IGNORE, dtype=np.uint8)
    lut[ids] = np.arange(171)
    return lut


def v10_lut():
    """Lookup table for release v1.0 (``S`` = train id + 2, 1 = unlabeled), clipped to 173."""
    lut = np.full(174, IGNORE, dtype=np.uint8)
    lut[2:173] = np.arange(171)
    return lut


def read_mat_label(path, release=None):
    """The label map ``S`` of a COCO-Stuff .mat file as a 2-D int64 array (rows = image height).

    Level-5 files are read with SciPy; v7.3 (HDF5) files need h5py and an explicit ``release``.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: annotation is missing")
    try:
        major, _ = scipy.io.matlab.matfile_version(path)
    except (ValueError, OSError, scipy.io.matlab.MatReadError) as e:
        raise ConversionError(f"{path}: not a MATLAB .mat file ({e})") from e
    if major == 2:
        if release is None:
            raise ConversionError(
                f"{path}: MATLAB v7.3 (HDF5) file. Release v1.1 ships level-5 files; v1.0 ships HDF5 files "
                "with another encoding of S. Pass --release v1.0 or --release v1.1 to say which it is."
            )
        try:
            import h5py
        except ImportError as e:
            raise ConversionError(f"{path}: MATLAB v7.3 (HDF5) file; reading it needs h5py (pip install h5py)") from e
        with h5py.File(path, "r") as f:
            if "S" not in f:
                raise ConversionError(f"{path}: no variable 'S' in the .mat file (found: {sorted(f.keys())})")
            label = np.asarray(f["S"]).T  # MATLAB is column-major
    else:
        try:
            data = scipy.io.loadmat(path, variable_names=["S"])
        except Exception as e:  # SciPy raises a variety of types for corrupt files
            raise ConversionError(f"{path}: cannot read the .mat file ({type(e).__name__}: {e})") from e
        if "S" not in data:
            found = [name for name, _, _ in scipy.io.whosmat(path)]
            raise ConversionError(f"{path}: no variable 'S' in the .mat file (found: {found})")
        label = np.asarray(data["S"])
    if label.ndim != 2 or label.dtype.kind not in "uif" or label.size == 0:
        raise ConversionError(f"{path}: 'S' must be a 2-D numeric label map, got shape {label.shape} {label.dtype}")
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise ConversionError(f"{path}: 'S' holds non-integer values")
    if label.min() < 0:
        raise ConversionError(f"{path}: 'S' holds negative values")
    return label.astype(np.int64, copy=False)


def convert_coco(job):
    """Convert one image: ``job = (image_src, mat_src, image_dst, label_dst, list_file, release)``."""
    image_src, mat_src, image_dst, label_dst, list_file, release = job
    if not os.path.isfile(image_src):
        raise ConversionError(f"{image_src}: image listed in {list_file} is missing")
    width, height = image_size(image_src)
    status = "skipped"
    hist = valid_label_histogram(label_dst, (width, height), len(COCO_STUFF_171_CLASSES))
    if hist is None:
        label = read_mat_label(mat_src, release)
        if label.shape != (height, width):
            raise ConversionError(
                f"{mat_src}: label map is {label.shape[1]}x{label.shape[0]} (WxH) "
                f"but image {image_src} is {width}x{height}"
            )
        lut = v10_lut() if release == "v1.0" else coco_lut()
        hist = save_label(lut[np.minimum(label, len(lut) - 1)], label_dst)
        status = "converted"
    if copy_if_needed(image_src, image_dst):
        status = "converted"
    return status, hist


def read_image_list(path):
    """Stems listed in ``imageLists/<split>.txt`` (an optional extension is dropped)."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: image list is missing (expected the COCO-Stuff-10K v1.1 imageLists/ folder)")
    with open(path) as f:
        stems = [os.path.splitext(os.path.basename(line.strip()))[0] for line in f if line.strip()]
    if not stems:
        raise ConversionError(f"{path}: image list is empty")
    return stems


def coco_jobs(src, dst, release=None):
    jobs = []
    for split in SPLITS:
        list_file = os.path.join(src, "imageLists", f"{split}.txt")
        for stem in read_image_list(list_file):
            jobs.append(
                (
                    os.path.join(src, "images", f"{stem}.jpg"),
                    os.path.join(src, "annotations", f"{stem}.mat"),
                    os.path.join(dst, "images_detectron2", split, f"{stem}.jpg"),
                    os.path.join(dst, "annotations_detectron2", split, f"{stem}.png"),
                    list_file,
                    release,
                )
            )
    return jobs


def main(argv=None):
    default_src = os.path.join("coco", "coco_stuff_10k")
    parser = base_parser(__doc__, default_src)
    parser.add_argument(
        "--release",
        choices=("v1.1", "v1.0"),
        help="encoding of S; required only for MATLAB v7.3 (HDF5) files (default: v1.1 for level-5 files)",
    )
    args = parser.parse_args(argv)
    src, dst = resolve_dirs(args, default_src)
    try:
        jobs = coco_jobs(src, dst, args.release)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return run_conversion(
        jobs, convert_coco, COCO_STUFF_171_CLASSES, "coco_stuff_10k", workers=args.workers, keep_going=args.keep_going
    )


if __name__ == "__main__":
    sys.exit(main())
