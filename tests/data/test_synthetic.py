"""Tests of the built-in synthetic dataset (simformer/data/datasets/synthetic.py): small params, tmp dirs."""
import glob
import json
import multiprocessing as mp
import os

import cv2
import numpy as np
from PIL import Image
import pytest

import simformer.data.datasets.synthetic as syn
from detectron2.data import DatasetCatalog, MetadataCatalog

SMALL = dict(image_size=64, num_train=24, num_val=6)
K = len(syn.SYNTHETIC_CLASSES)


def _pngs(root):
    return sorted(glob.glob(os.path.join(root, "*", "*", "*.png")))


def _read_split(root, split):
    files = sorted(glob.glob(os.path.join(root, "images", split, "*.png")))
    images = np.stack([cv2.imread(f, cv2.IMREAD_COLOR)[:, :, ::-1] for f in files])
    labels = np.stack([cv2.imread(f.replace(os.sep + "images" + os.sep, os.sep + "labels" + os.sep), cv2.IMREAD_UNCHANGED) for f in files])
    return images, labels


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return syn.ensure_synthetic_dataset(str(tmp_path_factory.mktemp("syn") / "simformer_synthetic"), **SMALL)


def test_constants():
    assert K >= 10 and len(set(syn.SYNTHETIC_CLASSES)) == K
    assert len(syn.SYNTHETIC_STUFF_IDS) >= 2 and len(syn.SYNTHETIC_OBJECT_IDS) >= 8
    assert sorted(syn.SYNTHETIC_STUFF_IDS + syn.SYNTHETIC_OBJECT_IDS) == list(range(K))
    assert len({tuple(c) for c in syn.SYNTHETIC_COLORS}) == K


def test_layout_and_meta(small_root):
    meta = json.load(open(os.path.join(small_root, "meta.json")))
    assert meta["version"] == syn.GENERATOR_VERSION and meta["classes"] == syn.SYNTHETIC_CLASSES
    assert meta["counts"] == {"train": 24, "val": 6}
    assert meta["params"]["image_size"] == [64, 64] and meta["params"]["num_train"] == 24
    for split, n in meta["counts"].items():
        images = sorted(os.listdir(os.path.join(small_root, "images", split)))
        labels = sorted(os.listdir(os.path.join(small_root, "labels", split)))
        assert images == labels and len(images) == n
        assert sum(meta["class_pixel_counts"][split]) == n * 64 * 64
    image = cv2.imread(os.path.join(small_root, "images", "train", "train_00000.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(os.path.join(small_root, "labels", "train", "train_00000.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.uint8
    # nothing left over next to the root (temp folders)
    assert [n for n in os.listdir(os.path.dirname(small_root)) if ".tmp-" in n or ".old-" in n] == []


def test_deterministic(tmp_path):
    params = dict(image_size=48, num_train=4, num_val=2, seed=3)
    syn.generate_synthetic_dataset(str(tmp_path / "a"), **params)
    syn.generate_synthetic_dataset(str(tmp_path / "b"), **params)
    syn.generate_synthetic_dataset(str(tmp_path / "c"), **dict(params, seed=4))
    a, b, c = (_pngs(str(tmp_path / d)) for d in "abc")
    assert len(a) == 12
    read = lambda f: open(f, "rb").read()  # noqa: E731
    assert all(read(x) == read(y) for x, y in zip(a, b))
    assert sum(read(x) != read(z) for x, z in zip(a, c)) == len(a)


def test_label_values_and_class_coverage(small_root):
    _, train = _read_split(small_root, "train")
    _, val = _read_split(small_root, "val")
    values = set(np.unique(np.concatenate([train.ravel(), val.ravel()])).tolist())
    assert values <= set(range(K)) | {255}
    present = set(np.unique(train).tolist())
    assert set(syn.SYNTHETIC_OBJECT_IDS) <= present, f"missing object classes {set(syn.SYNTHETIC_OBJECT_IDS) - present}"
    assert set(syn.SYNTHETIC_STUFF_IDS) <= present
    counts = np.bincount(train.ravel(), minlength=K)[:K]
    assert counts[syn.SYNTHETIC_OBJECT_IDS].min() > 0.002 * train.size  # objects are not specks


def test_colour_does_not_identify_class(tmp_path):
    """Majority class per quantised RGB bin (fit on the whole set, i.e. optimistic) is a poor classifier."""
    root = syn.ensure_synthetic_dataset(str(tmp_path / "s"), image_size=64, num_train=60, num_val=1)
    images, labels = _read_split(root, "train")
    q = (images // 32).astype(np.int64)  # 8 levels per channel
    code = (q[..., 0] * 8 + q[..., 1]) * 8 + q[..., 2]
    for sel in (np.ones(labels.shape, bool), np.isin(labels, syn.SYNTHETIC_OBJECT_IDS)):
        table = np.bincount(code[sel] * K + labels[sel], minlength=512 * K).reshape(512, K)
        accuracy = table.max(1).sum() / table.sum()
        assert accuracy < 0.5, accuracy
    # every colour bin with many pixels is shared by several classes
    table = np.bincount(code.ravel() * K + labels.ravel(), minlength=512 * K).reshape(512, K)
    busy = table.sum(1) > 0.01 * labels.size
    assert ((table[busy] > 0).sum(1) >= 3).all()


def test_cache_and_regenerate(tmp_path):
    root = str(tmp_path / "simformer_synthetic")
    params = dict(image_size=48, num_train=3, num_val=2)
    assert syn.ensure_synthetic_dataset(root, **params) == os.path.abspath(root)
    meta_file = os.path.join(root, "meta.json")
    png = os.path.join(root, "images", "train", "train_00000.png")
    stamps = (os.stat(meta_file).st_mtime_ns, os.stat(png).st_mtime_ns, os.stat(png).st_ino)
    syn.ensure_synthetic_dataset(root, **params)
    assert (os.stat(meta_file).st_mtime_ns, os.stat(png).st_mtime_ns, os.stat(png).st_ino) == stamps

    syn.ensure_synthetic_dataset(root, **dict(params, seed=1))  # other params: regenerated
    assert json.load(open(meta_file))["params"]["seed"] == 1
    assert os.stat(png).st_ino != stamps[2]
    inode = os.stat(png).st_ino
    syn.ensure_synthetic_dataset(root, force=True, **dict(params, seed=1))
    assert os.stat(png).st_ino != inode
    assert sorted(os.listdir(tmp_path)) == [".simformer_synthetic.lock", "simformer_synthetic"]


def test_incomplete_or_foreign_root(tmp_path):
    root = tmp_path / "simformer_synthetic"
    (root / "images").mkdir(parents=True)  # incomplete: no meta.json
    (root / "images" / "stale.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a simformer synthetic dataset"):
        syn.ensure_synthetic_dataset(str(root), image_size=48, num_train=2, num_val=1)
    assert sorted(os.listdir(tmp_path)) == [".simformer_synthetic.lock", "simformer_synthetic"]  # refused before generating
    (tmp_path / ".empty.tmp-killed").mkdir()  # leftover of a killed run: cleaned up
    empty = tmp_path / "empty"
    empty.mkdir()
    syn.ensure_synthetic_dataset(str(empty), image_size=48, num_train=2, num_val=1)
    assert (empty / "meta.json").exists()
    assert not (tmp_path / ".empty.tmp-killed").exists()


def test_bad_params():
    with pytest.raises(TypeError, match="num_trian"):
        syn.ensure_synthetic_dataset("/nonexistent", num_trian=3)
    with pytest.raises(ValueError, match="min_objects"):
        syn.ensure_synthetic_dataset("/nonexistent", min_objects=4, max_objects=2)
    with pytest.raises(ValueError, match="image_size"):
        syn.ensure_synthetic_dataset("/nonexistent", image_size=8)
    with pytest.raises(ValueError, match="num_val must be a non-negative int, got '3'"):
        syn.ensure_synthetic_dataset("/nonexistent", num_val="3")
    with pytest.raises(ValueError, match="noise_std must be a number >= 0"):
        syn.ensure_synthetic_dataset("/nonexistent", noise_std=-1)
    with pytest.raises(ValueError, match="object_scale"):
        syn.ensure_synthetic_dataset("/nonexistent", object_scale=[0.5, 0.2])


def test_generate_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not empty"):
        syn.generate_synthetic_dataset(str(tmp_path), image_size=48, num_train=1, num_val=1)


def _count_calls(original, log_file):
    def wrapped(*args, **kwargs):
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        return original(*args, **kwargs)

    return wrapped


def _worker(root, barrier, out):
    barrier.wait()
    out.put(syn.ensure_synthetic_dataset(root, image_size=64, num_train=40, num_val=4))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_concurrent_processes(tmp_path, monkeypatch):
    root = str(tmp_path / "simformer_synthetic")
    calls = str(tmp_path / "calls.txt")
    monkeypatch.setattr(syn, "generate_synthetic_dataset", _count_calls(syn.generate_synthetic_dataset, calls))
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(root, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert {out.get(timeout=5), out.get(timeout=5)} == {os.path.abspath(root)}
    assert len(open(calls).read().split()) == 1  # generated once; the other process waited and reused it
    meta = json.load(open(os.path.join(root, "meta.json")))
    assert meta["counts"] == {"train": 40, "val": 4}
    assert len(_pngs(root)) == 88
    assert sorted(os.listdir(tmp_path)) == [".simformer_synthetic.lock", "calls.txt", "simformer_synthetic"]


def test_builtin_registration():
    for split in ("train", "val"):
        name = f"synthetic_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == syn.SYNTHETIC_CLASSES
        assert meta.stuff_colors == syn.SYNTHETIC_COLORS
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        assert meta.image_root == os.path.join(os.path.abspath(syn.default_synthetic_root()), "images", split)
        assert meta.sem_seg_root == os.path.join(os.path.abspath(syn.default_synthetic_root()), "labels", split)
    syn._register_builtin()  # a second import-time registration is a no-op
    syn.register_synthetic()  # same arguments: no-op
    with pytest.raises(ValueError, match="already registered with different"):
        syn.register_synthetic("/somewhere/else")


def test_default_root(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert syn.default_synthetic_root() == os.path.join("/data/d2", "simformer_synthetic")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert syn.default_synthetic_root() == os.path.join("datasets", "simformer_synthetic")


@pytest.fixture
def reregister():
    """Let a test re-register synthetic_{train,val}; restore the import-time registration afterwards."""

    def drop():
        for split in ("train", "val"):
            for catalog in (DatasetCatalog, MetadataCatalog):
                if f"synthetic_{split}" in catalog.list():
                    catalog.remove(f"synthetic_{split}")

    drop()
    yield
    drop()
    syn.register_synthetic()


def test_registered_loader_generates_lazily(tmp_path, reregister):
    root = str(tmp_path / "simformer_synthetic")
    syn.register_synthetic(root, image_size=48, num_train=5, num_val=2)
    assert not os.path.exists(root)  # nothing generated at registration
    dicts = DatasetCatalog.get("synthetic_train")
    assert os.path.exists(os.path.join(root, "meta.json"))
    assert [d["image_id"] for d in dicts] == [f"train_{i:05d}" for i in range(5)]
    d = dicts[0]
    assert d["file_name"] == os.path.join(os.path.abspath(root), "images", "train", "train_00000.png")
    assert d["sem_seg_file_name"] == os.path.join(os.path.abspath(root), "labels", "train", "train_00000.png")
    assert (d["height"], d["width"]) == (48, 48)
    assert len(DatasetCatalog.get("synthetic_val")) == 2
    assert DatasetCatalog.get("synthetic_train") == dicts  # deterministic


def test_describe_and_cli(tmp_path, capsys):
    text = syn.describe_synthetic()
    assert all(name in text for name in syn.SYNTHETIC_CLASSES)
    syn.main(["--root", str(tmp_path / "s"), "--num-train", "3", "--num-val", "2", "--image-size", "48"])
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    assert all(name in out for name in syn.SYNTHETIC_CLASSES)


def test_open_variant_adds_pixels_of_no_class_and_changes_nothing_else(tmp_path):
    """OPEN_PARAMS paint objects of no class and unlabelled patches (255) with their own random stream: outside
    those pixels, images and labels are byte-identical to the fully labelled variant; 5-15 % of the pixels
    have no class, in images with and without novel classes."""
    params = dict(image_size=128, num_train=40, num_val=2)
    closed = syn.ensure_synthetic_dataset(str(tmp_path / "closed"), **params)
    opened = syn.ensure_synthetic_dataset(str(tmp_path / "open"), **params, **syn.OPEN_PARAMS)
    meta = json.load(open(os.path.join(opened, "meta.json")))
    assert meta["params"]["unknown_objects"] == syn.OPEN_PARAMS["unknown_objects"]
    total, none, with_novel, without_novel = 0, 0, 0, 0
    for name in sorted(os.listdir(os.path.join(closed, "labels", "train"))):
        lab_c = np.asarray(Image.open(os.path.join(closed, "labels", "train", name)))
        lab_o = np.asarray(Image.open(os.path.join(opened, "labels", "train", name)))
        img_c = np.asarray(Image.open(os.path.join(closed, "images", "train", name)))
        img_o = np.asarray(Image.open(os.path.join(opened, "images", "train", name)))
        labelled = lab_o != 255
        assert np.array_equal(lab_o[labelled], lab_c[labelled]) and np.array_equal(img_o[labelled], img_c[labelled])
        assert not (lab_c == 255).any()
        total, none = total + lab_o.size, none + (~labelled).sum()
        if (~labelled).any():
            novel = np.isin(lab_o, [5, 8, 9]).any()
            with_novel, without_novel = with_novel + novel, without_novel + (not novel)
    assert 0.05 <= none / total <= 0.15, none / total
    assert with_novel > 0 and without_novel > 0
    assert meta["ignore_pixel_counts"]["train"] == none


def test_open_params_are_validated():
    with pytest.raises(ValueError, match="unknown_objects must be"):
        syn.ensure_synthetic_dataset("/nonexistent/x", unknown_objects=[2, 1])
    with pytest.raises(ValueError, match="unlabelled_patch_prob must be"):
        syn.ensure_synthetic_dataset("/nonexistent/x", unlabelled_patch_prob=1.5)
