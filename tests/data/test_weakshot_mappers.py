"""WeakShotDatasetMapper and PairDatasetMapper on hand-made label maps (spec §1.2, §1.3)."""
import json
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from simformer import add_simformer_config
from simformer.data.dataset_mappers import MAPPER_REGISTRY, build_mapper
from simformer.data.dataset_mappers.pair_mapper import PairDatasetMapper
from simformer.data.dataset_mappers.weakshot_mapper import WeakShotDatasetMapper
from simformer.data.datasets.weakshot import register_real_weakshot, register_simulated_weakshot

CLASSES = ["sky", "grass", "giraffe", "zebra", "car"]
NOVEL = [2, 3]  # giraffe, zebra

# 8x8 label map: left half sky (0), top-right giraffe (2), bottom-right zebra (3), one car (4) pixel row.
LABEL = np.zeros((8, 8), np.uint8)
LABEL[:4, 4:] = 2
LABEL[4:, 4:] = 3
LABEL[7, :4] = 4
LABEL[0, 0] = 255


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _image():
    return np.random.RandomState(0).randint(0, 255, (8, 8, 3)).astype(np.uint8)


@pytest.fixture
def tiny(tmp_path):
    """One image 'a' with LABEL (full) and its base-only version."""
    _save(str(tmp_path / "images" / "a.png"), _image())
    _save(str(tmp_path / "full" / "a.png"), LABEL)
    _save(str(tmp_path / "base_only" / "a.png"), np.where(np.isin(LABEL, NOVEL), 255, LABEL).astype(np.uint8))
    return tmp_path


@pytest.fixture
def names():
    """Fresh dataset names (``names(k)``), unregistered afterwards."""
    made = []

    def new(tag=""):
        made.append(f"test_wsm_{tag}{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for n in made:
        for catalog in (DatasetCatalog, MetadataCatalog):
            if n in catalog.list():
                catalog.remove(n)


def _mapper(augmentations=(), size_divisibility=-1, **kwargs):
    args = dict(novel_class_ids=NOVEL, weakshot_type="simulated", image_level_labels="image", novel_has_mask=False, pseudo_label_dir="")
    args.update(kwargs)
    return WeakShotDatasetMapper(
        True, augmentations=list(augmentations), image_format="RGB", num_classes=5, ignore_label=255, size_divisibility=size_divisibility, **args
    )


def _dict(root, labels="full", novel_tags=(2, 3)):
    return {
        "file_name": str(root / "images" / "a.png"),
        "sem_seg_file_name": str(root / labels / "a.png"),
        "height": 8,
        "width": 8,
        "image_id": "a",
        "novel_tags": list(novel_tags),
    }


def _cfg(train_name, **weakshot):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 5
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (8,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.FLIP_PROB = 0.0
    for key, value in weakshot.items():
        setattr(cfg.INPUT.WEAKSHOT, key.upper(), value)
    return cfg


def _targets(out):
    inst = out["instances"]
    return inst.gt_classes.tolist(), inst.gt_has_mask.tolist(), inst.gt_masks


# ------------------------------------------------------------------------------------------------
# WeakShotDatasetMapper
# ------------------------------------------------------------------------------------------------
def test_registered():
    assert MAPPER_REGISTRY.get("WeakShotDatasetMapper") is WeakShotDatasetMapper
    assert MAPPER_REGISTRY.get("PairDatasetMapper") is PairDatasetMapper


def test_base_masks_and_novel_image_level_targets(tiny):
    d = _dict(tiny)
    out = _mapper(size_divisibility=10)(d)
    classes, has_mask, masks = _targets(out)
    assert classes == [0, 4, 2, 3] and has_mask == [True, True, False, False]
    assert masks.dtype == torch.bool and masks.shape == (4, 10, 10)
    expected = np.full((10, 10), 255)
    expected[:8, :8] = LABEL
    assert torch.equal(masks[0], torch.from_numpy(expected == 0)) and torch.equal(masks[1], torch.from_numpy(expected == 4))
    assert not masks[2:].any()
    # novel pixels are ignore in sem_seg, kept in sem_seg_raw; padding is ignore in both
    hidden = np.where(np.isin(expected, NOVEL), 255, expected)
    assert out["sem_seg"].dtype == torch.int64 and torch.equal(out["sem_seg"], torch.from_numpy(hidden))
    assert torch.equal(out["sem_seg_raw"], torch.from_numpy(expected))
    assert out["image"].shape == (3, 10, 10) and out["image"].dtype == torch.uint8
    assert "pad_region" not in out
    assert d["novel_tags"] == [2, 3] and "instances" not in d  # input dict untouched


def test_image_level_vs_crop_level_labels(tiny):
    left = [T.CropTransform(0, 0, 4, 8)]  # keeps sky + car, cuts away both novel classes
    out = _mapper(left)(_dict(tiny))
    assert _targets(out)[:2] == ([0, 4, 2, 3], [True, True, False, False])
    out = _mapper(left, image_level_labels="crop")(_dict(tiny))
    assert _targets(out)[:2] == ([0, 4], [True, True])
    top_right = [T.CropTransform(4, 0, 4, 4)]  # giraffe only
    out = _mapper(top_right, image_level_labels="crop")(_dict(tiny))
    assert _targets(out)[:2] == ([2], [False])
    assert (out["sem_seg"] == 255).all() and (out["sem_seg_raw"] == 2).all()
    # image level: the whole image's tags, not what the label map holds
    out = _mapper(top_right)(_dict(tiny, novel_tags=[3]))
    assert _targets(out)[:2] == ([3], [False])


def test_image_level_needs_valid_novel_tags(tiny):
    d = _dict(tiny)
    del d["novel_tags"]
    with pytest.raises(KeyError, match="novel_tags"):
        _mapper()(d)
    with pytest.raises(ValueError, match=r"novel_tags \[0, 2\] are not all novel"):
        _mapper()(_dict(tiny, novel_tags=[0, 2]))


def test_pseudo_labels(tiny):
    pseudo = np.array(LABEL)
    pseudo[:, 4:] = 2  # the pseudo-labeller calls the whole right half giraffe
    _save(str(tiny / "pseudo" / "a.png"), pseudo)
    out = _mapper(novel_has_mask=True, pseudo_label_dir=str(tiny / "pseudo"))(_dict(tiny))
    classes, has_mask, masks = _targets(out)
    assert classes == [0, 2, 4] and has_mask == [True] * 3
    assert torch.equal(masks[1], torch.from_numpy(pseudo == 2))
    assert torch.equal(out["sem_seg"], torch.from_numpy(pseudo.astype(np.int64)))
    assert out["sem_seg_file_name"].endswith(os.path.join("full", "a.png"))  # the dict still names the GT
    # pseudo-labels without novel masks: novel pixels hidden again, image-level targets from the tags
    out = _mapper(pseudo_label_dir=str(tiny / "pseudo"))(_dict(tiny))
    assert _targets(out)[:2] == ([0, 4, 2, 3], [True, True, False, False])


def test_keep_lost_tags(tiny):
    pseudo = np.array(LABEL)
    pseudo[:, 4:] = 2  # zebra (3) is tagged but the pseudo-label has no zebra pixel: its tag is lost
    _save(str(tiny / "pseudo" / "a.png"), pseudo)
    out = _mapper(novel_has_mask=True, pseudo_label_dir=str(tiny / "pseudo"), keep_lost_tags=True)(_dict(tiny))
    classes, has_mask, masks = _targets(out)
    assert classes == [0, 2, 4, 3] and has_mask == [True, True, True, False]  # zebra kept as a class-only target
    assert not masks[3].any() and torch.equal(masks[1], torch.from_numpy(pseudo == 2))
    # without the option (the paper) the lost tag vanishes; a tag the pseudo-label has is never duplicated
    assert _targets(_mapper(novel_has_mask=True, pseudo_label_dir=str(tiny / "pseudo"))(_dict(tiny)))[0] == [0, 2, 4]
    assert _targets(_mapper(novel_has_mask=True, pseudo_label_dir=str(tiny / "pseudo"), keep_lost_tags=True)(_dict(tiny, novel_tags=[2])))[0] == [0, 2, 4]
    with pytest.raises(ValueError, match="KEEP_LOST_TAGS"):
        _mapper(keep_lost_tags=True, pseudo_label_dir=str(tiny / "pseudo"))  # stage 1: tags are targets already


def test_missing_pseudo_label_is_an_error(tiny):
    os.makedirs(tiny / "pseudo")
    mapper = _mapper(novel_has_mask=True, pseudo_label_dir=str(tiny / "pseudo"))
    with pytest.raises(FileNotFoundError) as e:
        mapper(_dict(tiny))
    assert str(tiny / "pseudo" / "a.png") in str(e.value) and "PSEUDO_LABEL_DIR" in str(e.value)


def test_real_weakshot_checks(tiny):
    out = _mapper(weakshot_type="real")(_dict(tiny, labels="base_only", novel_tags=[3]))
    assert _targets(out)[:2] == ([0, 4, 3], [True, True, False])
    assert torch.equal(out["sem_seg"], out["sem_seg_raw"])
    with pytest.raises(ValueError, match=r"novel classes \[2, 3\]"):
        _mapper(weakshot_type="real")(_dict(tiny, labels="full"))
    with pytest.raises(ValueError, match="IMAGE_LEVEL_LABELS='crop'"):
        _mapper(weakshot_type="real", image_level_labels="crop")
    with pytest.raises(ValueError, match="PSEUDO_LABEL_DIR"):
        _mapper(weakshot_type="real", novel_has_mask=True)


def test_from_config(tiny, names):
    name = names()
    register_simulated_weakshot(name, str(tiny / "images"), str(tiny / "full"), CLASSES, ["giraffe", "zebra"])
    mapper = build_mapper(_with_mapper(_cfg(name, image_level_labels="crop"), "WeakShotDatasetMapper"))
    assert isinstance(mapper, WeakShotDatasetMapper)
    assert (mapper.novel_class_ids, mapper.weakshot_type, mapper.image_level_labels) == (NOVEL, "simulated", "crop")
    out = mapper(DatasetCatalog.get(name)[0])
    assert _targets(out)[:2] == ([0, 4, 2, 3], [True, True, False, False])
    with pytest.raises(ValueError, match="INPUT.WEAKSHOT.IMAGE_LEVEL_LABELS"):
        WeakShotDatasetMapper(_cfg(name, image_level_labels="tile"))
    plain = names()
    MetadataCatalog.get(plain).set(stuff_classes=CLASSES, ignore_label=255)
    with pytest.raises(KeyError, match=f"{plain}.*novel_class_ids"):
        WeakShotDatasetMapper(_cfg(plain))


def _with_mapper(cfg, mapper_name):
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    return cfg


# ------------------------------------------------------------------------------------------------
# PairDatasetMapper
# ------------------------------------------------------------------------------------------------
# Classes per image; base {0, 1, 4}, novel {2, 3}.
PAIR_IMAGES = {
    "p0": [0, 2, 3],  # two novel classes
    "p1": [0, 2],  # shares exactly giraffe with p0
    "p2": [1, 3],  # shares exactly zebra with p0
    "p3": [1],  # no novel class
    "p4": [0, 2, 3],  # shares both novel classes with p0
    "p5": [4],  # nothing in common with anyone
}


@pytest.fixture
def pair_data(tmp_path):
    for stem, classes in PAIR_IMAGES.items():
        label = np.full((8, 8), classes[-1], np.uint8)
        label[:, : len(classes)] = classes
        _save(str(tmp_path / "images" / f"{stem}.png"), _image())
        _save(str(tmp_path / "labels" / "full" / f"{stem}.png"), label)
        _save(str(tmp_path / "labels" / "base_only" / f"{stem}.png"), np.where(np.isin(label, NOVEL), 255, label).astype(np.uint8))
    tags = {stem: [CLASSES[c] for c in classes if c in NOVEL] for stem, classes in PAIR_IMAGES.items()}
    with open(tmp_path / "tags.json", "w") as f:
        json.dump(tags, f)
    return tmp_path


def _pair_mapper(root, names, kind="simulated", **weakshot):
    name = names(kind)
    if kind == "simulated":
        register_simulated_weakshot(name, str(root / "images"), str(root / "labels" / "full"), CLASSES, NOVEL)
    else:
        register_real_weakshot(name, str(root / "images"), str(root / "labels" / "base_only"), CLASSES, str(root / "tags.json"))
    return build_mapper(_with_mapper(_cfg(name, **weakshot), "PairDatasetMapper")), DatasetCatalog.get(name)


def _partners(mapper, i, n=120):
    return {mapper.partner_index(i) for _ in range(n)}


@pytest.mark.parametrize(
    "pair_type, focus, expected",
    [
        ("Deconf0", 0, {1, 2}),  # one of p0's novel classes, then an image sharing exactly that class
        ("Deconf1", 0, {1}),  # the class with the fewest candidates (tie: smallest id, giraffe)
        ("Deconf0.01", 1, {0, 4}),  # one novel class: an image sharing a novel class
        ("Deconf0.01", 3, {2}),  # no novel class: an image sharing a base class
        ("Deconf0.01", 5, {5}),  # nothing shared: itself
        ("Rand", 0, {1, 2, 3, 4, 5}),
        ("BInter", 2, {3}),  # base first
        ("NInter", 2, {0, 4}),  # novel first
        ("BInter", 1, {0, 4}),
    ],
)
def test_pair_types(pair_data, names, pair_type, focus, expected):
    mapper, dicts = _pair_mapper(pair_data, names, pair_type=pair_type)
    assert _partners(mapper, focus) == expected
    out = mapper(dicts[focus])
    assert out["file_name"] == dicts[focus]["file_name"]
    assert out["pair"]["file_name"] in {dicts[j]["file_name"] for j in expected}
    assert set(out["pair"]) >= {"image", "sem_seg", "sem_seg_raw", "instances"} and "pair" not in out["pair"]


def test_real_pairs_use_tags(pair_data, names):
    real, _ = _pair_mapper(pair_data, names, "real", pair_type="Deconf0")
    simulated, _ = _pair_mapper(pair_data, names, "simulated", pair_type="Deconf0")
    for i in range(len(PAIR_IMAGES)):
        for kind in ("novel_common", "base_common"):
            assert real.pair_table.candidates(i, kind).tolist() == simulated.pair_table.candidates(i, kind).tolist()
        assert real.pair_table.novel_classes(i).tolist() == simulated.pair_table.novel_classes(i).tolist()
    assert _partners(real, 0) == {1, 2}


def test_pair_cache_dir(pair_data, names, tmp_path):
    _pair_mapper(pair_data, names)
    assert any(f.startswith("pair_table_") for f in os.listdir(pair_data / "labels" / "pair_cache"))
    _pair_mapper(pair_data, names, "real", pair_cache_dir=str(tmp_path / "elsewhere"))
    assert any(f.startswith("pair_table_") for f in os.listdir(tmp_path / "elsewhere"))


def test_bad_pair_type(pair_data, names):
    with pytest.raises(ValueError, match="INPUT.WEAKSHOT.PAIR_TYPE='Deconf2'.*'Rand'"):
        _pair_mapper(pair_data, names, pair_type="Deconf2")
    with pytest.raises(ValueError, match="INPUT.WEAKSHOT.PAIR_TYPE='random'"):
        _pair_mapper(pair_data, names, pair_type="random")


def test_partner_stream_follows_torch_seed(pair_data, names):
    """Each process / data-loader worker (its own torch initial seed) draws its own partner stream."""
    built, dicts = _pair_mapper(pair_data, names, pair_type="Rand")

    def stream(seed):
        mapper = PairDatasetMapper(mapper=built.mapper, dataset_dicts=dicts, pair_table=built.pair_table, pair_type="Rand")
        torch.manual_seed(seed)
        return [mapper.partner_index(0) for _ in range(30)]

    assert stream(5) == stream(5) != stream(6)


def test_unknown_focus_image(pair_data, names):
    mapper, dicts = _pair_mapper(pair_data, names)
    with pytest.raises(KeyError, match="not an image of the training dataset"):
        mapper(dict(dicts[0], file_name="/nowhere/x.png"))


def test_batches_of_three_pairs(pair_data, names):
    mapper, dicts = _pair_mapper(pair_data, names, pair_type="Deconf0.01")
    loader = build_detection_train_loader(dicts, mapper=mapper, total_batch_size=3, num_workers=0)
    batch = next(iter(loader))
    assert len(batch) == 3
    for item in batch:
        for x in (item, item["pair"]):
            inst = x["instances"]
            assert x["image"].shape == (3, 8, 8) and inst.gt_masks.shape[1:] == (8, 8)
            assert len(inst.gt_classes) == len(inst.gt_has_mask) == len(inst.gt_masks)
            assert not inst.gt_masks[~inst.gt_has_mask].any()


def test_tag_noise_is_deterministic_nested_and_at_its_rates():
    from simformer.data.tag_noise import noisy_tags

    novel = [2, 3, 5]
    images = [(f"img{i}", [2, 3] if i % 2 else [5]) for i in range(4000)]
    again = [noisy_tags(t, novel, k, 0.3, 0.1, seed=7) for k, t in images]
    assert again == [noisy_tags(t, novel, k, 0.3, 0.1, seed=7) for k, t in images]  # a function of (seed, image)
    assert again != [noisy_tags(t, novel, k, 0.3, 0.1, seed=8) for k, t in images]
    true = sum(len(t) for _, t in images)
    for drop in (0.1, 0.3):
        noisy = [noisy_tags(t, novel, k, drop, 0.0, seed=7) for k, t in images]
        kept = sum(len(n) for n in noisy)
        assert abs(1 - kept / true - drop) < 0.02 and all(set(n) <= set(t) for n, (_, t) in zip(noisy, images))
        if drop == 0.1:
            light = noisy
    heavy = [noisy_tags(t, novel, k, 0.3, 0.0, seed=7) for k, t in images]
    assert all(set(h) <= set(lt) for h, lt in zip(heavy, light))  # the 30 % dropped include the 10 %
    added = [noisy_tags(t, novel, k, 0.0, 0.1, seed=7) for k, t in images]
    spurious = [set(a) - set(t) for a, (_, t) in zip(added, images)]
    assert abs(sum(len(s) > 0 for s in spurious) / len(images) - 0.1) < 0.02 and all(len(s) <= 1 and s <= set(novel) for s in spurious)
    assert noisy_tags([2], novel, "x", 0.0, 0.0) == [2]
    with pytest.raises(ValueError, match="TAG_NOISE"):
        noisy_tags([2], novel, "x", 1.5, 0.0)


def test_mapper_applies_tag_noise(tiny):
    from simformer.data.tag_noise import noisy_tags

    assert _targets(_mapper(tag_noise=(1.0, 0.0, 0))(_dict(tiny)))[:2] == ([0, 4], [True, True])  # every tag dropped
    out = _mapper(tag_noise=(0.5, 0.0, 3))(_dict(tiny))
    want = noisy_tags([2, 3], NOVEL, "a", 0.5, 0.0, 3)
    assert _targets(out)[0] == [0, 4] + want
    with pytest.raises(ValueError, match="TAG_NOISE"):
        _mapper(tag_noise=(0.1, 0.0, 0), image_level_labels="crop")
