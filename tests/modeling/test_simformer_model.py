"""SimFormer meta-architecture: weak-shot losses wired through mapper -> model -> optimizer."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from simformer import add_simformer_config
from simformer.data.dataset_mappers import build_mapper
from simformer.data.datasets.weakshot import register_real_weakshot, register_simulated_weakshot
from simformer.engine import build_optimizer
from simformer.modeling.matcher import HungarianMatcher
from tests.data.test_weakshot_training import BASE_CONFIG, CLASSES, NOVEL, TINY, _write_dataset
from tests.helpers import tiny_model

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "synthetic", "simformer")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("simformer_model"))
    _write_dataset(root, n=6)
    return root


def _cfg(train_name, mapper_name, *opts):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.merge_from_list(TINY)
    cfg.MODEL.META_ARCHITECTURE = "SimFormer"
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.merge_from_list(list(opts))
    return cfg


def _pair_batches(cfg, name, num_batches, pairs_per_batch):
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(name)
    return [[mapper(dicts[(pairs_per_batch * it + k) % len(dicts)]) for k in range(pairs_per_batch)] for it in range(num_batches)]


CROSIM = [
    "MODEL.SIMFORMER.COMP_LOSS_WEIGHT", "0.15",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT", "1.0",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_WEIGHT", "0.1",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_FUNC", "cce",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_POINT_NUM", "20",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.NOVEL_POINT_NUM", "20",
    "MODEL.SIMFORMER.CROSS_IMG_SIM.HIDDEN_DIM", "32",
]  # fmt: skip


@pytest.mark.parametrize("pairs_per_batch", [1, 3])
def test_crosim_training_any_number_of_pairs(data, name, pairs_per_batch):
    register_real_weakshot(name, os.path.join(data, "images"), os.path.join(data, "base_only"), CLASSES, os.path.join(data, "tags.json"))
    cfg = _cfg(name, "PairDatasetMapper", *CROSIM)
    cfg.INPUT.WEAKSHOT.PAIR_CACHE_DIR = os.path.join(data, "pair_cache_" + name)
    torch.manual_seed(0)
    batches = _pair_batches(cfg, name, 3, pairs_per_batch)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    simnet_before = [p.detach().clone() for p in model.criterion.terms["cross_image"].simnet.parameters()]
    for batch in batches:
        losses = model(batch)
        assert {"loss_comp", "loss_comp_0", "loss_cro_sim", "loss_cro_dit"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(simnet_before, model.criterion.terms["cross_image"].simnet.parameters()))
    assert int(model.criterion.terms["cross_image"].balance.num_updates) == 1 + len(batches)
    # the balance statistics are model state: saved in the state dict
    assert "criterion.terms.cross_image.balance.history" in model.state_dict()


def test_base_loss_detached_from_features(data, name):
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    cfg = _cfg(name, "PairDatasetMapper", "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT", "1.0", "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_POINT_NUM", "10")
    cfg.INPUT.WEAKSHOT.PAIR_CACHE_DIR = os.path.join(data, "pair_cache_" + name)
    batch = _pair_batches(cfg, name, 1, 2)[0]
    model = build_model(cfg)
    model.train()
    losses = model(batch)
    losses["loss_cro_sim"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.criterion.terms["cross_image"].simnet.parameters())


def test_comp_loss_without_pairs(data, name):
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    cfg = _cfg(name, "WeakShotDatasetMapper", "MODEL.SIMFORMER.COMP_LOSS_WEIGHT", "0.2")
    mapper = build_mapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(name)[:2]]
    model = build_model(cfg)
    model.train()
    losses = model(batch)
    assert set(losses) == set(model.weight_dict)
    assert losses["loss_comp"] > 0 and "loss_cro_sim" not in losses


def test_config_errors(data, name):
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    with pytest.raises(ValueError, match="PairDatasetMapper"):
        build_model(_cfg(name, "WeakShotDatasetMapper", "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT", "1.0"))
    with pytest.raises(ValueError, match="BASE_WEIGHT"):
        build_model(_cfg(name, "PairDatasetMapper", "MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_WEIGHT", "0.1"))
    with pytest.raises(ValueError, match="STUDENT_PAIRS"):
        build_model(_cfg(name, "PairDatasetMapper", "MODEL.SIMFORMER.CROSS_IMG_SIM.STUDENT_PAIRS", "both"))


def test_matcher_target_map_with_base_mask_empty_at_low_resolution():
    # targets in mixed order: novel, base (2x2 blob that vanishes at 1/4 resolution), base, novel
    h = 16
    tiny = torch.zeros(h, h)
    tiny[5:7, 5:7] = 1
    big = torch.zeros(h, h)
    big[8:, :] = 1
    targets = [{
        "labels": torch.tensor([3, 1, 2, 4]),
        "masks": torch.stack([torch.zeros(h, h), tiny, big, torch.zeros(h, h)]),
        "has_mask": torch.tensor([False, True, True, False]),
    }]  # fmt: skip
    logits = torch.full((1, 6, 6), -4.0)
    for q, c in enumerate([4, 2, 1, 3, 5, 5]):  # query q predicts class c
        logits[0, q, c] = 4.0
    masks = torch.full((1, 6, 4, 4), -5.0)
    masks[0, 1, 2:, :] = 5.0  # query 1 covers the lower half like 'big'
    matcher = HungarianMatcher()
    down = torch.nn.functional.interpolate(tiny[None, None], size=(4, 4), mode="nearest")
    assert down.sum() == 0  # the tiny base mask is empty at the matching resolution
    rows, cols = matcher({"pred_logits": logits, "pred_masks": masks}, targets)[0]
    assigned = {int(c): int(r) for r, c in zip(rows, cols)}
    # each target (by its index in the caller's list) goes to the query predicting its class
    assert assigned == {0: 3, 1: 2, 2: 1, 3: 0}
    assert np.array_equal(targets[0]["labels"][cols].numpy(), logits[0, rows, :-1].argmax(-1).numpy())


def test_class_presence_per_image():
    from simformer.modeling.loss_terms import class_presence

    targets = [
        {"labels": torch.tensor([0, 2, 5]), "has_mask": torch.tensor([True, True, False])},
        {"labels": torch.zeros(0, dtype=torch.int64), "has_mask": torch.zeros(0, dtype=torch.bool)},
        {"labels": torch.tensor([1, 4]), "has_mask": torch.tensor([True, False])},
    ]
    with_mask = class_presence(targets, 6, True, "cpu")
    without = class_presence(targets, 6, False, "cpu")
    assert with_mask.nonzero().tolist() == [[0, 0], [0, 2], [2, 1]]
    assert without.nonzero().tolist() == [[0, 5], [2, 4]]


@pytest.mark.parametrize("config", ["seg.yaml", "seg_crosim.yaml", "seg_best.yaml", "oracle.yaml"])
def test_build_criterion_weighs_every_loss_it_returns(config):
    """build_criterion: the loss names the assembled criterion returns (per-layer terms with deep-supervision
    suffixes, then the last-layer terms) are exactly the weighted names; terms of weight 0 are not built."""
    from simformer.modeling.build_criterion import build_criterion
    from simformer.tools.predict import build_cfg

    cfg = build_cfg(os.path.join(CONFIG_DIR, config), [])
    criterion, weights = build_criterion(cfg, weak_shot=True)
    names = criterion.loss_names(cfg.MODEL.MASK_FORMER.DEC_LAYERS)
    assert len(names) == len(set(names)) and set(names) == set(weights)
    sf = cfg.MODEL.SIMFORMER
    assert ("comp" in criterion.terms) == (sf.COMP_LOSS_WEIGHT != 0)
    assert ("cross_image" in criterion.terms) == (sf.CROSS_IMG_SIM.BASE_WEIGHT != 0)
    assert ("pixel_contrast" in criterion.terms) == (sf.PIXEL_CONTRAST.WEIGHT != 0)
    if "comp" in criterion.terms:
        assert weights["loss_comp"] == weights[f"loss_comp_{cfg.MODEL.MASK_FORMER.DEC_LAYERS - 2}"] == sf.COMP_LOSS_WEIGHT


def test_checkpoints_with_the_old_criterion_keys_load(tmp_path):
    """Checkpoints written when the criterion held SimNet / the pair balance / the pixel contrast itself
    (``criterion.simnet.*`` ...) load into the terms that own them now."""
    from detectron2.modeling import build_model

    from simformer.engine.checkpoint import AtomicCheckpointer
    from simformer.modeling.build_criterion import LEGACY_STATE_PREFIXES
    from simformer.tools.predict import build_cfg

    cfg = build_cfg(os.path.join(CONFIG_DIR, "seg_best.yaml"), tiny_model() + ["MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT", "1.0", "INPUT.DATASET_MAPPER_NAME", "PairDatasetMapper", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    source = build_model(cfg)
    old = {}
    for key, value in source.state_dict().items():
        for legacy, current in LEGACY_STATE_PREFIXES.items():
            if key.startswith(current):
                key = legacy + key[len(current):]
        old[key] = value
    assert any(k.startswith("criterion.simnet.") for k in old) and any(k.startswith("criterion.pixel_contrast.") for k in old)
    torch.save({"model": old}, tmp_path / "old.pth")
    torch.manual_seed(1)
    target = build_model(cfg)
    incompatible = AtomicCheckpointer(target)._load_model(AtomicCheckpointer(target)._load_file(str(tmp_path / "old.pth")))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
