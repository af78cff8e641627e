"""SSA in the per-pixel model (detectron2 SemanticSegmentor + PerPixelBaselineHead): config selection,
a few training steps of a tiny config, parameter increase, teacher-free inference weights."""
import os

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from simformer import add_simformer_config
from simformer.engine import build_optimizer
from simformer.modeling.classifiers import CLASSIFIER_REGISTRY
from ssa_adapter import DEFAULT_LOSS_WEIGHTS, drop_teachers, inference_parameter_increase
from tests import block_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SSA_CONFIG = os.path.join(REPO, "configs", "synthetic", "ssa", "per_pixel_R18_ssa.yaml")
BASELINE_CONFIG = os.path.join(REPO, "configs", "synthetic", "per_pixel_R18_fully_supervised.yaml")
NUM_CLASSES, DIM, SIZE = 4, 32, 64
TINY = block_images.per_pixel_tiny(NUM_CLASSES, DIM)


def _cfg(path, *opts):
    return block_images.config(path, TINY, *opts)


def _batch(seed, n=2):
    """Block images with one unlabelled (255) strip (tests/block_images.py)."""
    return block_images.block_batch(seed, n, SIZE, NUM_CLASSES)


def test_ssa_is_selected_by_config_and_off_by_default():
    assert "SSAClassifier" in CLASSIFIER_REGISTRY
    cfg = get_cfg()
    add_simformer_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME == "LinearClassifier"
    ssa = cfg.MODEL.SSA
    weights = [ssa.COARSE_WEIGHT, ssa.DICE_WEIGHT, ssa.TEACHER_CE_WEIGHT, ssa.TEACHER_DICE_WEIGHT, ssa.RD_WEIGHT, ssa.SD_WEIGHT, ssa.PD_WEIGHT]
    assert weights == list(DEFAULT_LOSS_WEIGHTS.values()) and ssa.TAU == 15.0
    model = build_model(_cfg(SSA_CONFIG, "MODEL.SSA.SD_WEIGHT", "3.0"))
    assert type(model.sem_seg_head.classifier).__name__ == "SSAClassifier"
    assert model.sem_seg_head.classifier.ssa.loss_weights["sd"] == 3.0


def test_parameter_increase_over_the_baseline_head():
    baseline = build_model(_cfg(BASELINE_CONFIG))
    ssa = build_model(_cfg(SSA_CONFIG, "MODEL.SSA.TEACHER", "False"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ssa) - count(baseline) == inference_parameter_increase(DIM, NUM_CLASSES)
    assert count(build_model(_cfg(SSA_CONFIG))) - count(ssa) == 4 * DIM**2 + 2 * DIM  # the teacher


def test_ssa_per_pixel_model_trains_and_exports_without_teacher():
    torch.manual_seed(0)
    cfg = _cfg(SSA_CONFIG)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    teacher = model.sem_seg_head.classifier.ssa.teacher
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    expected = {"loss_sem_seg"} | {f"loss_ssa_{t}" for t in DEFAULT_LOSS_WEIGHTS}
    batch = _batch(0)
    history, losses = block_images.train_steps(model, optimizer, [batch] * 4)
    assert set(losses) == expected
    assert history[-1] < history[0], history
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))

    model.eval()
    inputs = [{"image": x["image"], "height": SIZE, "width": SIZE} for x in _batch(1, n=1)]
    with torch.no_grad():
        reference = model(inputs)[0]["sem_seg"]
    assert reference.shape == (NUM_CLASSES, SIZE, SIZE)

    deploy = build_model(_cfg(SSA_CONFIG, "MODEL.SSA.TEACHER", "False")).eval()
    incompatible = deploy.load_state_dict(model.state_dict())
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    with torch.no_grad():
        assert torch.allclose(deploy(inputs)[0]["sem_seg"], reference, atol=1e-5)
    assert drop_teachers(model) == 1 and not any(".teacher." in k for k in model.state_dict())
