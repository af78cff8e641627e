"""Tests of register_sem_seg_folder / load_sem_seg_folder (simformer/data/datasets/folder.py)."""
import os

import numpy as np
import pytest
from PIL import Image

from simformer.data.datasets.folder import default_class_colors, load_sem_seg_folder, register_sem_seg_folder
from detectron2.data import DatasetCatalog, MetadataCatalog

CLASSES = ["road", "car", "tree"]


def _write(folder, stems, ext=".png", size=(6, 4), label=False):
    """Write images (RGB) or labels (uint8) of ``size`` (W, H) named ``<stem><ext>``."""
    os.makedirs(folder, exist_ok=True)
    w, h = size
    for i, stem in enumerate(stems):
        if label:
            arr = np.full((h, w), i % len(CLASSES), np.uint8)
            arr[0, 0] = 255
            Image.fromarray(arr).save(os.path.join(folder, stem + ext))
        else:
            Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(os.path.join(folder, stem + ext))


@pytest.fixture
def folders(tmp_path):
    images, labels = str(tmp_path / "images"), str(tmp_path / "labels")
    _write(images, ["b", "a"], ".jpg")
    _write(images, ["c"], ".png", size=(5, 7))
    _write(labels, ["a", "b"], label=True)
    _write(labels, ["c"], label=True, size=(5, 7))
    return images, labels


def test_load_sorted_dicts(folders):
    images, labels = folders
    dicts = load_sem_seg_folder(images, labels)
    assert [d["image_id"] for d in dicts] == ["a", "b", "c"]
    assert dicts[0] == {
        "file_name": os.path.join(images, "a.jpg"),
        "sem_seg_file_name": os.path.join(labels, "a.png"),
        "height": 4,
        "width": 6,
        "image_id": "a",
    }
    assert (dicts[2]["height"], dicts[2]["width"]) == (7, 5)
    assert [d["image_id"] for d in load_sem_seg_folder(images, labels, image_ext="jpg")] == ["a", "b"]


def test_register_dicts_and_metadata(folders, name):
    images, labels = folders
    meta = register_sem_seg_folder(name, images, labels, CLASSES, base_class_ids=[0, 2], novel_class_ids=[1], note="x")
    assert meta is MetadataCatalog.get(name)
    assert meta.stuff_classes == CLASSES
    assert meta.stuff_colors == default_class_colors(3) and len({tuple(c) for c in meta.stuff_colors}) == 3
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.image_root == images and meta.sem_seg_root == labels
    assert meta.base_class_ids == [0, 2] and meta.novel_class_ids == [1] and meta.note == "x"
    dicts = DatasetCatalog.get(name)
    assert dicts == load_sem_seg_folder(images, labels)


def test_register_custom_colors_relative_paths(folders, name, monkeypatch):
    images, labels = folders
    monkeypatch.chdir(os.path.dirname(images))
    colors = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    meta = register_sem_seg_folder(name, "images", "labels", CLASSES, colors=colors, ignore_label=200, evaluator_type="custom")
    assert meta.stuff_colors == colors and meta.ignore_label == 200 and meta.evaluator_type == "custom"
    assert meta.image_root == images
    monkeypatch.chdir("/")
    assert DatasetCatalog.get(name)[0]["file_name"] == os.path.join(images, "a.jpg")


def test_errors_are_raised_by_the_loader(tmp_path, name):
    missing = str(tmp_path / "nope")
    register_sem_seg_folder(name, missing, str(tmp_path), CLASSES)  # registration itself reads nothing
    with pytest.raises(FileNotFoundError, match=f"dataset '{name}'.*image_root '{missing}' does not exist"):
        DatasetCatalog.get(name)


def test_missing_label_root(folders, tmp_path, name):
    images, _ = folders
    missing = str(tmp_path / "nolabels")
    register_sem_seg_folder(name, images, missing, CLASSES)
    with pytest.raises(FileNotFoundError, match=f"label_root '{missing}' does not exist"):
        DatasetCatalog.get(name)


def test_no_images(tmp_path, name):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    register_sem_seg_folder(name, str(tmp_path / "empty"), str(tmp_path), CLASSES)
    with pytest.raises(FileNotFoundError, match="no images with extension .* found in image_root '.*empty'"):
        DatasetCatalog.get(name)


def test_image_without_label(folders, name):
    images, labels = folders
    _write(images, ["d", "e"], ".png")
    register_sem_seg_folder(name, images, labels, CLASSES)
    with pytest.raises(FileNotFoundError, match=r"2 of 5 images .* no label file '<stem>\.png'.*'d\.png', 'e\.png'"):
        DatasetCatalog.get(name)


def test_size_mismatch_and_duplicate_stems(folders, tmp_path):
    images, labels = folders
    _write(labels, ["c"], label=True, size=(6, 4))  # c.png label is now 6x4, image is 5x7
    with pytest.raises(ValueError, match="c.png' is 6x4 .* is 5x7"):
        load_sem_seg_folder(images, labels)
    _write(images, ["a"], ".png")  # a.jpg and a.png
    with pytest.raises(ValueError, match="several files with stem 'a'"):
        load_sem_seg_folder(images, labels)


def test_duplicate_registration(folders, name):
    images, labels = folders
    register_sem_seg_folder(name, images, labels, CLASSES, base_class_ids=[0])
    register_sem_seg_folder(name, images, labels, CLASSES, base_class_ids=[0])  # identical: no-op
    with pytest.raises(ValueError, match=rf"'{name}' is already registered with different \['base_class_ids'\]"):
        register_sem_seg_folder(name, images, labels, CLASSES, base_class_ids=[1])
    with pytest.raises(ValueError, match="different .*'stuff_classes'"):
        register_sem_seg_folder(name, images, labels, ["x", "y", "z"], base_class_ids=[0])
    # after removal from the catalogs, the name can be registered again with other arguments
    DatasetCatalog.remove(name)
    meta = register_sem_seg_folder(name, images, labels, CLASSES, base_class_ids=[1])
    assert meta.base_class_ids == [1]


def test_name_registered_elsewhere(folders, name):
    DatasetCatalog.register(name, lambda: [])
    with pytest.raises(ValueError, match="already registered \\(not by this function\\)"):
        register_sem_seg_folder(name, *folders, CLASSES)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(class_names=[]), "class_names must be a non-empty list"),
        (dict(class_names=["a", "b", "a"]), r"duplicates \['a'\]"),
        (dict(ignore_label=1), r"ignore_label must be an int in \[3, 255\]"),
        (dict(colors=[[0, 0, 0]]), "colors must be 3 RGB triplets"),
        (dict(novel_class_ids=[1, 3]), r"novel_class_ids must hold class ids in \[0, 2\]"),
        (dict(stuff_classes=["a"]), "metadata key 'stuff_classes' is set from the function's own arguments"),
        (dict(label_ext=""), "label_ext must be a non-empty string"),
    ],
)
def test_bad_arguments(folders, name, kwargs, match):
    images, labels = folders
    kwargs = dict(dict(class_names=CLASSES), **kwargs)
    with pytest.raises(ValueError, match=match):
        register_sem_seg_folder(name, images, labels, kwargs.pop("class_names"), **kwargs)
    assert name not in DatasetCatalog.list()
