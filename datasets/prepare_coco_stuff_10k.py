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

The conversion driver (progress bar, resume, workers, summary) is ``simformer.data.prepare``, shared with
``prepare_ade20k_sem_seg.py``.
"""
import os
import sys

import numpy as np
import scipy.io

from simformer.data.datasets.splits import COCO_STUFF_171_CLASSES, COCO_STUFF_171_COCO_IDS

SPLITS = ("train", "test")
MAX_COCO_ID = 182


from simformer.data.prepare import (  # noqa: E402  (the conversion driver shared with prepare_ade20k_sem_seg.py)
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
