"""A few MaskFormer training steps on simulated and on real weak-shot data (registration -> mapper -> model)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from simformer import add_simformer_config
from simformer.data.dataset_mappers import build_mapper
from simformer.data.datasets.weakshot import register_real_weakshot, register_simulated_weakshot
from simformer.engine import build_optimizer
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIG = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
CLASSES = ["left", "right", "giraffe", "zebra", "car"]
NOVEL = ["giraffe", "zebra"]
TINY = tiny_model(5, queries=6) + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.CROP.SIZE", "(48, 48)",
    "INPUT.PAD_TO_SIZE", "64",
]  # fmt: skip


def _write_dataset(root, n=4, size=64):
    """Halves 'left'/'right', one novel square (giraffe or zebra) and one car square per image; also a
    base-only copy of the labels and a tags file for the real weak-shot registration."""
    rng = np.random.RandomState(0)
    tags = {}
    for folder in ("images", "full", "base_only"):
        os.makedirs(os.path.join(root, folder))
    for i in range(n):
        label = np.zeros((size, size), np.uint8)
        label[:, size // 2 :] = 1
        novel = 2 + i % 2
        y, x = rng.randint(4, size - 24, 2)
        label[y : y + 20, x : x + 20] = novel
        y, x = rng.randint(4, size - 16, 2)
        label[y : y + 12, x : x + 12] = 4
        image = np.stack([label * 50, 255 - label * 40, rng.randint(0, 60, (size, size))], -1).astype(np.uint8)
        stem = f"{i:03d}"
        Image.fromarray(image).save(os.path.join(root, "images", stem + ".png"))
        Image.fromarray(label).save(os.path.join(root, "full", stem + ".png"))
        Image.fromarray(np.where(np.isin(label, [2, 3]), 255, label).astype(np.uint8)).save(os.path.join(root, "base_only", stem + ".png"))
        tags[stem] = [CLASSES[c] for c in np.unique(label) if c in (2, 3)]
    with open(os.path.join(root, "tags.json"), "w") as f:
        json.dump(tags, f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ws_train"))
    _write_dataset(root)
    return root


def _cfg(train_name, mapper_name):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.merge_from_list(TINY)
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.SOLVER.BASE_LR = 1e-4
    return cfg


def _train(cfg, batches):
    """A manual loop over ``batches`` (lists of model inputs); returns the loss dicts as floats."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    history = []
    for batch in batches:
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    expected = {"loss_ce", "loss_focal", "loss_dice", "loss_ce_0", "loss_focal_0", "loss_dice_0"}
    for losses in history:
        assert set(losses) == expected == set(model.weight_dict)
        assert all(np.isfinite(v) for v in losses.values()), losses
    return history


def test_simulated_weakshot_trains(data, name):
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    cfg = _cfg(name, "WeakShotDatasetMapper")
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(name)
    batches = [[mapper(dicts[(2 * it + k) % len(dicts)]) for k in range(2)] for it in range(3)]
    novel_targets = [(x["instances"].gt_classes[~x["instances"].gt_has_mask]).tolist() for b in batches for x in b]
    assert all(t in ([2], [3]) for t in novel_targets)  # image-level: every image keeps its novel class
    assert all(not (torch.isin(x["sem_seg"], torch.tensor([2, 3]))).any() for b in batches for x in b)
    _train(cfg, batches)


def test_real_weakshot_trains_with_pairs(data, name):
    register_real_weakshot(name, os.path.join(data, "images"), os.path.join(data, "base_only"), CLASSES, os.path.join(data, "tags.json"))
    cfg = _cfg(name, "PairDatasetMapper")
    cfg.INPUT.WEAKSHOT.PAIR_CACHE_DIR = os.path.join(data, "pair_cache_" + name)
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(name)
    batches = []
    for it in range(2):
        batch = []
        for k in range(3):  # 3 pairs = 6 images, flattened [A1, B1, A2, B2, A3, B3]
            out = mapper(dicts[(3 * it + k) % len(dicts)])
            batch += [out, out.pop("pair")]
        batches.append(batch)
    assert all(len(x["instances"]) and not x["instances"].gt_has_mask.all() for b in batches for x in b)
    _train(cfg, batches)
