"""datasets/prepare_*.py on small fixtures in the official raw formats."""
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

DATASETS_DIR = str(Path(__file__).resolve().parents[2] / "datasets")
UNUSED_COCO_IDS = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]


@pytest.fixture(scope="module")
def coco():
    return _import("prepare_coco_stuff_10k")


@pytest.fixture(scope="module")
def ade():
    return _import("prepare_ade20k_sem_seg")


def _import(name):
    sys.path.insert(0, DATASETS_DIR)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(DATASETS_DIR)


def expected_coco(S):
    """Train ids written independently of the script: COCO ids 1..182 minus the unused ones, in order."""
    train_of = {coco_id: k for k, coco_id in enumerate(c for c in range(1, 183) if c not in UNUSED_COCO_IDS)}
    return np.vectorize(lambda v: train_of.get(int(v), 255))(S).astype(np.uint8)


def write_jpg(path, width, height, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def read_png(path):
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


# ------------------------------------------------------------------------------------------------
# COCO-Stuff-10K v1.1
# ------------------------------------------------------------------------------------------------
COCO_STEMS = {
    "train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078", "COCO_train2014_000000000079"],
    "test": ["COCO_train2014_000000000080", "COCO_train2014_000000000081"],
}


def make_coco(root, seed=0):
    """A v1.1 tree; every label map holds unlabeled, unused, the first/last ids and > 182 values."""
    rng = np.random.default_rng(seed)
    labels = {}
    special = np.array([0, 1, 11, 12, 13, 26, 91, 92, 181, 182, 183, 200, 255], dtype=np.uint8)
    for split, stems in COCO_STEMS.items():
        os.makedirs(root / "imageLists", exist_ok=True)
        (root / "imageLists" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
        for k, stem in enumerate(stems):
            height, width = 5 + k, 7 + 2 * k
            S = rng.integers(0, 256, (height, width), dtype=np.uint8)
            S.ravel()[: len(special)] = special
            write_jpg(str(root / "images" / f"{stem}.jpg"), width, height, seed=k)
            os.makedirs(root / "annotations", exist_ok=True)
            scipy.io.savemat(root / "annotations" / f"{stem}.mat", {"S": S, "names": np.array(["x"])})
            labels[(split, stem)] = S
    return labels


def coco_outputs_ok(dst, labels):
    for (split, stem), S in labels.items():
        label = read_png(dst / "annotations_detectron2" / split / f"{stem}.png")
        np.testing.assert_array_equal(label, expected_coco(S))
        copied = dst / "images_detectron2" / split / f"{stem}.jpg"
        assert copied.read_bytes() == (dst / "images" / f"{stem}.jpg").read_bytes()


def test_coco_conversion_ids(coco, tmp_path, capsys):
    root = tmp_path / "coco" / "coco_stuff_10k"
    labels = make_coco(root)
    assert coco.main(["--src", str(root)]) == 0
    coco_outputs_ok(root, labels)
    S = labels[("train", COCO_STEMS["train"][0])]
    label = read_png(root / "annotations_detectron2" / "train" / f"{COCO_STEMS['train'][0]}.png")
    # unlabeled, 1 -> 0 (person), 11 -> 10, unused 12 -> 255, 13 -> 11, unused 26/91, 92 -> 80, 182 -> 170, > 182
    assert label.ravel()[:13].tolist() == [255, 0, 10, 255, 11, 255, 255, 80, 169, 170, 255, 255, 255]
    assert np.array_equal(label == 255, np.isin(S, [0, *UNUSED_COCO_IDS]) | (S > 182))
    out = capsys.readouterr().out
    assert "converted 5, skipped (already valid) 0, failed 0" in out
    assert "top-5 classes by pixels" in out


def test_coco_default_paths_and_workers(coco, tmp_path, monkeypatch):
    root = tmp_path / "coco" / "coco_stuff_10k"
    labels = make_coco(root, seed=1)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    out_dir = tmp_path / "out"
    assert coco.main(["--dst", str(out_dir), "--workers", "2"]) == 0
    for (split, stem), S in labels.items():
        label = read_png(out_dir / "annotations_detectron2" / split / f"{stem}.png")
        np.testing.assert_array_equal(label, expected_coco(S))
        assert (out_dir / "images_detectron2" / split / f"{stem}.jpg").is_file()


def test_coco_resume_skips_valid_and_rewrites_corrupt(coco, tmp_path, capsys):
    root = tmp_path / "coco_stuff_10k"
    labels = make_coco(root)
    assert coco.main(["--src", str(root)]) == 0
    capsys.readouterr()
    assert coco.main(["--src", str(root)]) == 0
    assert "converted 0, skipped (already valid) 5, failed 0" in capsys.readouterr().out

    train = root / "annotations_detectron2" / "train"
    (train / f"{COCO_STEMS['train'][0]}.png").write_bytes(b"not a png")  # unreadable
    bad_ids = read_png(train / f"{COCO_STEMS['train'][1]}.png").copy()
    bad_ids[0, 0] = 200  # an id outside 0..170 / 255
    Image.fromarray(bad_ids).save(train / f"{COCO_STEMS['train'][1]}.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(train / f"{COCO_STEMS['train'][2]}.png")  # wrong size
    os.remove(root / "images_detectron2" / "test" / f"{COCO_STEMS['test'][0]}.jpg")  # missing copy
    assert coco.main(["--src", str(root)]) == 0
    assert "converted 4, skipped (already valid) 1, failed 0" in capsys.readouterr().out
    coco_outputs_ok(root, labels)


def test_coco_input_errors(coco, tmp_path, capsys):
    root = tmp_path / "coco_stuff_10k"
    make_coco(root)
    train, test = COCO_STEMS["train"], COCO_STEMS["test"]
    os.remove(root / "images" / f"{train[0]}.jpg")
    scipy.io.savemat(root / "annotations" / f"{train[1]}.mat", {"L": np.zeros((5, 7), np.uint8)})
    scipy.io.savemat(root / "annotations" / f"{test[0]}.mat", {"S": np.zeros((3, 3), np.uint8)})
    os.remove(root / "annotations" / f"{test[1]}.mat")

    assert coco.main(["--src", str(root)]) == 1  # stops at the first failure
    err = capsys.readouterr().err
    assert f"{train[0]}.jpg: image listed in" in err and "train.txt is missing" in err
    assert "--keep-going" in err

    assert coco.main(["--src", str(root), "--keep-going"]) == 1
    captured = capsys.readouterr()
    assert "converted 1, skipped (already valid) 0, failed 4" in captured.out
    err = captured.err
    assert f"{train[1]}.mat: no variable 'S' in the .mat file (found: ['L'])" in err
    assert f"{test[0]}.mat: label map is 3x3 (WxH) but image" in err and f"{test[0]}.jpg is 7x5" in err
    assert f"{test[1]}.mat: annotation is missing" in err
    assert (root / "annotations_detectron2" / "train" / f"{train[2]}.png").is_file()

    os.remove(root / "imageLists" / "test.txt")
    assert coco.main(["--src", str(root)]) == 1
    assert "test.txt: image list is missing" in capsys.readouterr().err


def test_coco_hdf5_needs_release_and_h5py(coco, tmp_path):
    path = tmp_path / "v73.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path.write_bytes(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 384)
    with pytest.raises(coco.ConversionError, match=r"v73\.mat: MATLAB v7\.3 \(HDF5\).*--release"):
        coco.read_mat_label(str(path))
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(coco.ConversionError, match=r"v73\.mat: .*needs h5py"):
            coco.read_mat_label(str(path), release="v1.1")


def test_coco_lut_is_a_bijection(coco):
    lut = coco.coco_lut()
    used = lut[lut != 255]
    assert sorted(used.tolist()) == list(range(171))
    assert np.flatnonzero(lut[:183] == 255).tolist() == [0, *UNUSED_COCO_IDS]
    v10 = coco.v10_lut()
    assert v10[0] == v10[1] == v10[173] == 255 and v10[2] == 0 and v10[172] == 170


# ------------------------------------------------------------------------------------------------
# ADE20K
# ------------------------------------------------------------------------------------------------
ADE_STEMS = {
    "training": ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"],
    "validation": ["ADE_val_00000001", "ADE_val_00000002"],
}


def make_ade(root, seed=0):
    rng = np.random.default_rng(seed)
    raws = {}
    for split, stems in ADE_STEMS.items():
        for k, stem in enumerate(stems):
            height, width = 6 + k, 4 + k
            raw = rng.integers(0, 151, (height, width), dtype=np.uint8)
            raw.ravel()[:4] = [0, 1, 150, 75]
            write_jpg(str(root / "images" / split / f"{stem}.jpg"), width, height, seed=k)
            os.makedirs(root / "annotations" / split, exist_ok=True)
            Image.fromarray(raw).save(root / "annotations" / split / f"{stem}.png")
            raws[(split, stem)] = raw
    return raws


def expected_ade(raw):
    return np.where(raw == 0, 255, raw.astype(np.int64) - 1).astype(np.uint8)


@pytest.mark.parametrize("copy", [False, True])
def test_ade_conversion_and_layouts(ade, tmp_path, capsys, copy):
    root = tmp_path / "ADEChallengeData2016"
    raws = make_ade(root)
    assert ade.main(["--src", str(root)] + (["--copy"] if copy else [])) == 0
    assert "converted 5, skipped (already valid) 0, failed 0" in capsys.readouterr().out
    for (split, stem), raw in raws.items():
        name = {"training": "train", "validation": "test"}[split]
        label = read_png(root / "annotations_detectron2" / name / f"{stem}.png")
        np.testing.assert_array_equal(label, expected_ade(raw))
        assert label.ravel()[:4].tolist() == [255, 0, 149, 74]
        # MaskFormer layout and SimFormer image folder
        np.testing.assert_array_equal(read_png(root / "annotations_detectron2" / split / f"{stem}.png"), label)
        image = root / "images_detectron2" / name / f"{stem}.jpg"
        assert image.read_bytes() == (root / "images" / split / f"{stem}.jpg").read_bytes()
        assert (root / "images_detectron2" / name).is_symlink() != copy
        assert (root / "annotations_detectron2" / split).is_symlink() != copy

    assert ade.main(["--src", str(root)] + (["--copy"] if copy else [])) == 0
    assert "converted 0, skipped (already valid) 5, failed 0" in capsys.readouterr().out
    stem = ADE_STEMS["training"][0]
    (root / "annotations_detectron2" / "train" / f"{stem}.png").write_bytes(b"")
    assert ade.main(["--src", str(root), "--workers", "2"] + (["--copy"] if copy else [])) == 0
    assert "converted 1, skipped (already valid) 4, failed 0" in capsys.readouterr().out
    np.testing.assert_array_equal(
        read_png(root / "annotations_detectron2" / "train" / f"{stem}.png"), expected_ade(raws[("training", stem)])
    )


def test_ade_input_errors(ade, tmp_path, capsys):
    root = tmp_path / "ADEChallengeData2016"
    make_ade(root)
    train, val = ADE_STEMS["training"], ADE_STEMS["validation"]
    bad = np.full((6, 4), 151, np.uint8)
    Image.fromarray(bad).save(root / "annotations" / "training" / f"{train[0]}.png")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "annotations" / "training" / f"{train[1]}.png")
    os.remove(root / "images" / "validation" / f"{val[0]}.jpg")
    os.remove(root / "annotations" / "validation" / f"{val[1]}.png")

    assert ade.main(["--src", str(root), "--keep-going"]) == 1
    captured = capsys.readouterr()
    assert "converted 1, skipped (already valid) 0, failed 4" in captured.out
    err = captured.err
    assert f"{train[0]}.png: values [151] above 150" in err
    assert f"{train[1]}.png: annotation is 3x3 (WxH) but image" in err
    assert f"{val[0]}.jpg: image of annotation" in err
    assert f"{val[1]}.png: annotation of image" in err and "is missing" in err

    (root / "images_detectron2" / "train").unlink()
    (root / "images_detectron2" / "train").symlink_to(tmp_path)
    assert ade.main(["--src", str(root)]) == 1
    assert "images_detectron2/train: symlink points to" in capsys.readouterr().err
    (root / "images_detectron2" / "train").unlink()
    os.rename(root / "images" / "training", root / "images" / "train_moved")
    assert ade.main(["--src", str(root)]) == 1
    assert "images/training: folder is missing" in capsys.readouterr().err
