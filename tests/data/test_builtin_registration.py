"""Built-in datasets and weak-shot splits (simformer/data/datasets/builtin.py, spec §7)."""
import os

import numpy as np
import pytest
from PIL import Image

from simformer.data.datasets import builtin
from simformer.data.datasets.splits import (
    ADE20K_150_CLASSES,
    ADE20K_EXCLUDED_STEMS,
    COCO_STUFF_10K_EXCLUDED_STEMS,
    COCO_STUFF_171_CLASSES,
)
from simformer.data.datasets.synthetic import SYNTHETIC_CLASSES
from detectron2.data import DatasetCatalog, MetadataCatalog

COCO_COUNTS = {1: 43, 2: 43, 3: 43, 4: 43, 5: 51, 6: 59, 7: 68, 8: 76, 9: 85}
COCO_NAMES = ["coco_stuff_10k_sem_seg_train", "coco_stuff_10k_sem_seg_test"] + [
    f"coco_stuff_split{k}_{s}" for k in COCO_COUNTS for s in ("train", "val")
]


@pytest.mark.parametrize("k", sorted(COCO_COUNTS))
@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_split_metadata(k, split):
    meta = MetadataCatalog.get(f"coco_stuff_split{k}_{split}")
    assert meta.stuff_classes == list(COCO_STUFF_171_CLASSES) and len(meta.stuff_colors) == 171
    assert len(meta.novel_class_ids) == COCO_COUNTS[k] and len(meta.base_class_ids) == 171 - COCO_COUNTS[k]
    assert meta.novel_class_ids == sorted(meta.novel_class_ids) and meta.base_class_ids == sorted(meta.base_class_ids)
    assert sorted(meta.novel_class_ids + meta.base_class_ids) == list(range(171))
    assert (meta.ignore_label, meta.evaluator_type, meta.weakshot_type) == (255, "sem_seg", "simulated")
    assert meta.split_name == f"coco_stuff_split{k}"
    folder = "train" if split == "train" else "test"
    assert meta.image_root.endswith(os.path.join("coco", "coco_stuff_10k", "images_detectron2", folder))
    assert meta.sem_seg_root.endswith(os.path.join("coco", "coco_stuff_10k", "annotations_detectron2", folder))


def test_coco_split_ids():
    novel = {k: MetadataCatalog.get(f"coco_stuff_split{k}_train").novel_class_ids for k in COCO_COUNTS}
    assert novel[1][:5] == [3, 6, 10, 11, 18] and novel[1][-1] == 169
    assert novel[2][:4] == [1, 3, 6, 7]
    assert novel[3][:3] == [0, 5, 10] and 164 in novel[3]
    assert {3, 12, 170} <= set(novel[4]) and 0 not in novel[4]
    for k in range(5, 10):  # nested prefixes of the same permutation
        assert set(novel[k - 1]) < set(novel[k])
    assert set(novel[5]) - set(novel[4]) == {0, 31, 47, 66, 82, 91, 111, 120}
    names = MetadataCatalog.get("coco_stuff_split1_val").stuff_classes
    assert [names[i] for i in novel[1][:3]] == ["motorcycle", "train", "fire hydrant"]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_ade_split_metadata(k):
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"ADE_split{k}_{split}")
        assert meta.stuff_classes == list(ADE20K_150_CLASSES)
        assert len(meta.novel_class_ids) == 38 and len(meta.base_class_ids) == 112
        assert sorted(meta.novel_class_ids + meta.base_class_ids) == list(range(150))
        assert meta.split_name == f"ADE_split{k}" and meta.weakshot_type == "simulated"
        folder = "train" if split == "train" else "test"
        assert meta.image_root.endswith(os.path.join("ADEChallengeData2016", "images_detectron2", folder))
    first = {1: [1, 3, 6], 2: [0, 10, 21], 3: [0, 5, 9], 4: [5, 11, 13]}[k]
    assert MetadataCatalog.get(f"ADE_split{k}_train").novel_class_ids[:3] == first


def test_full_datasets():
    for name, n in (("coco_stuff_10k_sem_seg_train", 171), ("coco_stuff_10k_sem_seg_test", 171), ("ade20k_sem_seg_train", 150), ("ade20k_sem_seg_val", 150)):
        meta = MetadataCatalog.get(name)
        assert len(meta.stuff_classes) == n and meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        assert meta.get("novel_class_ids", None) is None
    # detectron2's own ade20k_sem_seg_* (MaskFormer layout) is replaced by the SimFormer layout
    assert MetadataCatalog.get("ade20k_sem_seg_val").image_root.endswith(os.path.join("images_detectron2", "test"))
    assert MetadataCatalog.get("ade20k_sem_seg_train").stuff_classes[8] == ADE20K_150_CLASSES[8]


def test_synthetic_weakshot_metadata():
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"synthetic_ws_{split}")
        assert meta.stuff_classes == SYNTHETIC_CLASSES
        assert meta.novel_class_ids == [5, 8, 9] == list(builtin.SYNTHETIC_WS_NOVEL_IDS)
        assert [SYNTHETIC_CLASSES[i] for i in meta.novel_class_ids] == ["triangle", "cross", "hexagon"]
        assert meta.base_class_ids == [0, 1, 2, 3, 4, 6, 7, 10, 11]
        assert (meta.weakshot_type, meta.split_name, meta.ignore_label) == ("simulated", "synthetic_ws", 255)
        # the open variant's files: pixels of no class (255), so "not base" is not "novel"
        assert meta.image_root == MetadataCatalog.get(f"synthetic_open_{split}").image_root
        assert meta.sem_seg_root == MetadataCatalog.get(f"synthetic_open_{split}").sem_seg_root
        assert "simformer_synthetic_open" in meta.image_root


@pytest.fixture
def coco_under(tmp_path):
    """The COCO-Stuff-10K names re-registered under ``tmp_path`` (restored afterwards)."""
    old_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(MetadataCatalog.get(COCO_NAMES[0]).image_root))))

    def reregister(root):
        for name in COCO_NAMES:
            DatasetCatalog.remove(name)
        builtin.register_all_coco_stuff_10k(root)

    reregister(str(tmp_path))
    yield str(tmp_path)
    reregister(old_root)


def test_missing_folder_names_path_and_prepare_command(coco_under):
    expected = os.path.join(coco_under, "coco", "coco_stuff_10k", "images_detectron2", "train")
    for name in ("coco_stuff_split1_train", "coco_stuff_10k_sem_seg_train"):
        with pytest.raises(FileNotFoundError) as e:
            DatasetCatalog.get(name)
        assert expected in str(e.value) and "python datasets/prepare_coco_stuff_10k.py" in str(e.value)
        assert name in str(e.value)


def test_ade_missing_folder_names_prepare_command():
    meta = MetadataCatalog.get("ADE_split1_train")
    if os.path.isdir(meta.image_root):
        pytest.skip("ADE20K is prepared under $DETECTRON2_DATASETS on this machine")
    with pytest.raises(FileNotFoundError, match="python datasets/prepare_ade20k_sem_seg.py") as e:
        DatasetCatalog.get("ADE_split1_train")
    assert meta.image_root in str(e.value)


def test_prepared_coco_loads_and_drops_excluded(coco_under):
    stems = ["COCO_train2014_000000000009", sorted(COCO_STUFF_10K_EXCLUDED_STEMS)[0], "COCO_train2014_000000000025"]
    for folder in ("train", "test"):
        images = os.path.join(coco_under, "coco", "coco_stuff_10k", "images_detectron2", folder)
        labels = os.path.join(coco_under, "coco", "coco_stuff_10k", "annotations_detectron2", folder)
        os.makedirs(images)
        os.makedirs(labels)
        for i, stem in enumerate(stems):
            Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(os.path.join(images, stem + ".jpg"))
            label = np.full((4, 5), 255, np.uint8)
            label[0, :2] = [3, 100 + i]  # 3 is novel in split 1; 100 is base
            Image.fromarray(label).save(os.path.join(labels, stem + ".png"))
    dicts = DatasetCatalog.get("coco_stuff_split1_train")
    assert [d["image_id"] for d in dicts] == [stems[0], stems[2]]
    assert [d["novel_tags"] for d in dicts] == [[3], [3]]
    assert [d["image_id"] for d in DatasetCatalog.get("coco_stuff_10k_sem_seg_test")] == [stems[0], stems[2]]
    assert "novel_tags" not in DatasetCatalog.get("coco_stuff_10k_sem_seg_train")[0]
    assert MetadataCatalog.get("coco_stuff_split1_train").excluded_stems == sorted(COCO_STUFF_10K_EXCLUDED_STEMS)


def test_ade_excluded_stems_in_metadata():
    assert MetadataCatalog.get("ADE_split2_train").excluded_stems == sorted(ADE20K_EXCLUDED_STEMS)
    assert len(ADE20K_EXCLUDED_STEMS) == 16
