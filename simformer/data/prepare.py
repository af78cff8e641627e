"""The conversion driver of the dataset preparation scripts (``datasets/prepare_*.py``): progress bar,
resume (valid outputs are skipped), worker processes, clear per-file errors and a summary with class
statistics. Each script supplies its own jobs and per-file ``convert`` function.
"""
import argparse
import os
import shutil
import sys
import time
from collections import Counter
from multiprocessing import Pool

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = ["IGNORE", "ConversionError", "dataset_root", "image_size", "valid_label_histogram", "save_label",
           "copy_if_needed", "run_conversion", "base_parser", "resolve_dirs"]  # fmt: skip

IGNORE = 255


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
