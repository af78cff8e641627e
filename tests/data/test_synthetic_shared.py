"""Tests of the second synthetic dataset (simformer/data/datasets/synthetic_shared.py): classes that
share a shape or a texture, no-class pixels, deterministic generation, weak-shot registration."""
import glob
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

import simformer.data.datasets.synthetic_shared as sh

SMALL = dict(num_train=12, num_val=4)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return sh.ensure_shared_dataset(str(tmp_path_factory.mktemp("shared") / "data"), **SMALL)


def _files(root):
    return sorted(glob.glob(os.path.join(root, "*", "*", "*.png")))


def test_classes_share_shapes_and_textures():
    objects = [sh.SHARED_CLASSES[i] for i in sh.SHARED_OBJECT_IDS]
    assert len(objects) == 9 and len(set(objects)) == 9
    shapes = [n.split()[1] for n in objects]
    textures = [n.split()[0] for n in objects]
    assert all(shapes.count(s) == 3 for s in shapes) and all(textures.count(t) == 3 for t in textures)
    novel = [sh.SHARED_CLASSES[i] for i in sh.SHARED_WS_NOVEL_IDS]
    # a Latin square: the novel classes have three different shapes and three different textures
    assert len({n.split()[1] for n in novel}) == 3 and len({n.split()[0] for n in novel}) == 3


def test_deterministic_and_labels_valid(small_root, tmp_path):
    other = sh.ensure_shared_dataset(str(tmp_path / "again"), **SMALL)
    a, b = _files(small_root), _files(other)
    assert [os.path.relpath(f, small_root) for f in a] == [os.path.relpath(f, other) for f in b] and len(a) == 2 * 16
    for fa, fb in zip(a, b):
        assert np.array_equal(cv2.imread(fa, cv2.IMREAD_UNCHANGED), cv2.imread(fb, cv2.IMREAD_UNCHANGED))
    labels = np.stack([cv2.imread(f, cv2.IMREAD_UNCHANGED) for f in a if os.sep + "labels" + os.sep in f])
    values = set(np.unique(labels).tolist())
    assert values <= set(range(12)) | {255} and 255 in values  # pixels of no class exist
    assert values & set(sh.SHARED_OBJECT_IDS) and values & set(sh.SHARED_STUFF_IDS)


def test_other_seed_other_images_and_cache(small_root, tmp_path):
    other = sh.ensure_shared_dataset(str(tmp_path / "seed1"), seed=1, **SMALL)
    first = cv2.imread(os.path.join(small_root, "images", "train", "train_00000.png"))
    assert not np.array_equal(first, cv2.imread(os.path.join(other, "images", "train", "train_00000.png")))
    stamp = os.path.getmtime(os.path.join(small_root, "meta.json"))
    sh.ensure_shared_dataset(small_root, **SMALL)  # same params: reused, not regenerated
    assert os.path.getmtime(os.path.join(small_root, "meta.json")) == stamp
    with pytest.raises(TypeError, match="unknown parameter"):
        sh.ensure_shared_dataset(str(tmp_path / "bad"), colours=3)


def test_weakshot_registration():
    meta = MetadataCatalog.get("synthetic_shared_ws_train")
    assert meta.novel_class_ids == list(sh.SHARED_WS_NOVEL_IDS)
    assert sorted(meta.base_class_ids + meta.novel_class_ids) == list(range(12))
    assert "synthetic_shared_val" in DatasetCatalog.list()
