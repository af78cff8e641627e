"""register_simulated_weakshot / register_real_weakshot (simformer/data/datasets/weakshot.py)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from simformer.data.datasets import weakshot
from simformer.data.datasets.weakshot import read_tags_file, register_real_weakshot, register_simulated_weakshot
from detectron2.data import DatasetCatalog, MetadataCatalog

CLASSES = ["sky", "grass", "giraffe", "zebra", "car"]  # novel: giraffe (2), zebra (3)
# Full labels per image: the set of classes painted into it.
FULL = {"a": [0, 2], "b": [1, 2, 3], "c": [0, 4]}


def _write_images(folder, stems, size=(6, 4)):
    os.makedirs(folder, exist_ok=True)
    for stem in stems:
        Image.fromarray(np.full((size[1], size[0], 3), 50, np.uint8)).save(os.path.join(folder, stem + ".png"))


def _write_labels(folder, classes_per_stem, hide=(), size=(6, 4)):
    """Column k of each label holds its k-th class (the last one fills the rest); ``hide`` ids -> 255."""
    os.makedirs(folder, exist_ok=True)
    for stem, classes in classes_per_stem.items():
        label = np.full((size[1], size[0]), classes[-1], np.uint8)
        label[:, : len(classes)] = classes
        label[np.isin(label, hide)] = 255
        Image.fromarray(label).save(os.path.join(folder, stem + ".png"))


@pytest.fixture
def data(tmp_path):
    images, full, base_only = (str(tmp_path / d) for d in ("images", "full", "base_only"))
    _write_images(images, FULL)
    _write_labels(full, FULL)
    _write_labels(base_only, FULL, hide=(2, 3))
    return tmp_path, images, full, base_only


def _write_json(path, tags):
    with open(path, "w") as f:
        json.dump(tags, f)
    return str(path)


# ------------------------------------------------------------------------------------------------
# simulated
# ------------------------------------------------------------------------------------------------
def test_simulated_metadata_and_novel_tags(data, name):
    _, images, full, _ = data
    meta = register_simulated_weakshot(name, images, full, CLASSES, ["zebra", 2], split_name="toy")
    assert meta.novel_class_ids == [2, 3] and meta.base_class_ids == [0, 1, 4]
    assert (meta.weakshot_type, meta.split_name, meta.evaluator_type, meta.ignore_label) == ("simulated", "toy", "sem_seg", 255)
    assert meta.stuff_classes == CLASSES and len(meta.stuff_colors) == 5
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == ["a", "b", "c"]
    assert [d["novel_tags"] for d in dicts] == [[2], [2, 3], []]
    assert dicts[1]["sem_seg_file_name"] == os.path.join(full, "b.png")


def test_simulated_excluded_stems_and_idempotent(data, name):
    _, images, full, _ = data
    register_simulated_weakshot(name, images, full, CLASSES, [2, 3], exclude_stems=["b"])
    assert [d["image_id"] for d in DatasetCatalog.get(name)] == ["a", "c"]
    assert MetadataCatalog.get(name).excluded_stems == ["b"]
    register_simulated_weakshot(name, images, full, CLASSES, [3, 2], exclude_stems=["b"])  # same: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_simulated_weakshot(name, images, full, CLASSES, [2], exclude_stems=["b"])


def test_simulated_label_scan_is_memoised(data, name, monkeypatch):
    _, images, full, _ = data
    register_simulated_weakshot(name, images, full, CLASSES, [2, 3])
    calls = []
    real = weakshot.build_presence_matrix
    monkeypatch.setattr(weakshot, "build_presence_matrix", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = DatasetCatalog.get(name)
    second = DatasetCatalog.get(name)
    assert first == second and len(calls) == 1
    os.utime(os.path.join(full, "a.png"), ns=(1, 1))  # a changed file: read again
    DatasetCatalog.get(name)
    assert len(calls) == 2


def test_unknown_novel_class_name(data, name):
    _, images, full, _ = data
    with pytest.raises(ValueError) as e:
        register_simulated_weakshot(name, images, full, CLASSES, ["giraffe", "zebr"])
    msg = str(e.value)
    assert "'zebr'" in msg and "did you mean 'zebra'" in msg and "'sky', 'grass'" in msg and name in msg
    assert name not in DatasetCatalog.list()


def test_novel_ids_out_of_range(data, name):
    _, images, full, _ = data
    with pytest.raises(ValueError, match=r"class id 5 is out of range \[0, 5\)"):
        register_simulated_weakshot(name, images, full, CLASSES, [2, 5])
    with pytest.raises(ValueError, match="class id -1"):
        register_simulated_weakshot(name, images, full, CLASSES, [-1])


@pytest.mark.parametrize(
    "novel, error, match",
    [
        ([], ValueError, "no novel classes"),
        ([0, 1, 2, 3, 4], ValueError, "at least one base class"),
        (["zebra", 3], ValueError, r"more than once: \['zebra'\]"),
        ("zebra", TypeError, "list of class names or ids"),
        ([True], TypeError, "class names or ids"),
    ],
)
def test_bad_novel_lists(data, name, novel, error, match):
    _, images, full, _ = data
    with pytest.raises(error, match=match):
        register_simulated_weakshot(name, images, full, CLASSES, novel)


def test_reserved_metadata_key(data, name):
    _, images, full, _ = data
    with pytest.raises(ValueError, match="novel_class_ids"):
        register_simulated_weakshot(name, images, full, CLASSES, [2], novel_class_ids=[1])


def test_image_without_label_file(data, name):
    tmp, images, full, _ = data
    _write_images(images, ["d"])
    register_simulated_weakshot(name, images, full, CLASSES, [2])
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    assert "'d.png'" in str(e.value) and "no label file" in str(e.value) and name in str(e.value)


def test_label_with_invalid_id(data, name):
    _, images, full, _ = data
    Image.fromarray(np.full((4, 6), 7, np.uint8)).save(os.path.join(full, "c.png"))
    register_simulated_weakshot(name, images, full, CLASSES, [2])
    with pytest.raises(ValueError, match=rf"dataset '{name}'.*c\.png.*\[7\]"):
        DatasetCatalog.get(name)


# ------------------------------------------------------------------------------------------------
# real
# ------------------------------------------------------------------------------------------------
def test_real_json(data, name):
    tmp, images, _, base_only = data
    tags = _write_json(tmp / "tags.json", {"a": ["giraffe"], "b.png": ["zebra", "giraffe"]})
    meta = register_real_weakshot(name, images, base_only, CLASSES, tags)
    assert meta.novel_class_ids == [2, 3] and meta.base_class_ids == [0, 1, 4]
    assert meta.weakshot_type == "real" and meta.tags_file == tags
    dicts = DatasetCatalog.get(name)
    assert [d["novel_tags"] for d in dicts] == [[2], [2, 3], []]


def test_real_csv_and_given_novel_list(data, name):
    tmp, images, _, base_only = data
    path = tmp / "tags.csv"
    path.write_text('image,classes\na.png,giraffe\n\nc,\n"b","zebra; giraffe"\n')
    assert read_tags_file(str(path)) == {"a": ["giraffe"], "c": [], "b": ["zebra", "giraffe"]}
    meta = register_real_weakshot(name, images, base_only, CLASSES, str(path), novel_classes=["giraffe", "zebra", "car"])
    assert meta.novel_class_ids == [2, 3, 4] and meta.base_class_ids == [0, 1]
    assert [d["novel_tags"] for d in DatasetCatalog.get(name)] == [[2], [2, 3], []]


def test_real_tag_for_unknown_class(data, name):
    tmp, images, _, base_only = data
    tags = _write_json(tmp / "tags.json", {"a": ["giraffe"], "b": ["zebraa"]})
    with pytest.raises(ValueError) as e:
        register_real_weakshot(name, images, base_only, CLASSES, tags)
    msg = str(e.value)
    assert "'zebraa'" in msg and "image 'b'" in msg and tags in msg and "'zebra'" in msg


def test_real_tag_for_base_class(data, name):
    tmp, images, _, base_only = data
    tags = _write_json(tmp / "tags.json", {"a": ["giraffe", "sky"]})
    with pytest.raises(ValueError, match=r"image 'a': \['sky'\] are base classes"):
        register_real_weakshot(name, images, base_only, CLASSES, tags, novel_classes=["giraffe", "zebra"])


def test_real_tags_for_missing_image(data, name):
    tmp, images, _, base_only = data
    tags = _write_json(tmp / "tags.json", {"a": ["giraffe"], "zz": ["zebra"], "yy": []})
    register_real_weakshot(name, images, base_only, CLASSES, tags)
    with pytest.raises(ValueError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert "'yy', 'zz'" in msg and "not in image_root" in msg and images in msg and tags in msg


def test_real_tags_for_excluded_image_are_fine(data, name):
    tmp, images, _, base_only = data
    tags = _write_json(tmp / "tags.json", {"a": ["giraffe"], "b": ["zebra"]})
    register_real_weakshot(name, images, base_only, CLASSES, tags, exclude_stems=["b"])
    assert [d["novel_tags"] for d in DatasetCatalog.get(name)] == [[2], []]


def test_real_image_without_label_file(data, name):
    tmp, images, _, base_only = data
    os.remove(os.path.join(base_only, "b.png"))
    register_real_weakshot(name, images, base_only, CLASSES, _write_json(tmp / "t.json", {"a": ["zebra"]}))
    with pytest.raises(FileNotFoundError, match="'b.png'"):
        DatasetCatalog.get(name)


@pytest.mark.parametrize(
    "filename, content, error, match",
    [
        ("t.json", "[1, 2]", ValueError, "expected a JSON object"),
        ("t.json", '{"a": "giraffe"}', ValueError, "image 'a' must be a list of class names"),
        ("t.json", "{oops", ValueError, "invalid JSON"),
        ("t.csv", "name,tags\na,giraffe\n", ValueError, "a column 'image' and either 'classes' or one column per class"),
        ("t.csv", "image,classes\na,giraffe\na,zebra\n", ValueError, "line 3: image 'a' already listed on line 2"),
        ("t.csv", "", ValueError, "empty"),
        ("t.txt", "a giraffe", ValueError, "expected a .json or .csv"),
        ("t.json", "{}", ValueError, "lists no class"),
    ],
)
def test_bad_tags_files(data, name, filename, content, error, match):
    tmp, images, _, base_only = data
    path = tmp / filename
    path.write_text(content)
    with pytest.raises(error, match=match) as e:
        register_real_weakshot(name, images, base_only, CLASSES, str(path))
    assert str(path) in str(e.value)


def test_missing_tags_file(data, name):
    tmp, images, _, base_only = data
    with pytest.raises(FileNotFoundError, match="nope.json"):
        register_real_weakshot(name, images, base_only, CLASSES, str(tmp / "nope.json"))
