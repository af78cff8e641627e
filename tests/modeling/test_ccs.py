"""CCS classifier (scene-adaptive class centres, cosine pixel-to-centre logits) and its class-centre losses:
hand-computed values on tiny tensors, the shared classifier interface (targets, prototypes), config
selection, and a few training steps inside the per-pixel model."""
import math
import os

import pytest
import torch
import torch.nn as nn
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Instances

from simformer import add_simformer_config
from simformer.data.dataset_mappers import build_mapper, label_map_to_targets
from simformer.data.datasets.weakshot import register_simulated_weakshot
from simformer.engine import build_optimizer
from simformer.modeling.classifiers import CLASSIFIER_REGISTRY, build_classifier
from simformer.modeling.classifiers.ccs import CCSClassifier, scene_adaptive_centres
from simformer.modeling.losses.class_center import inter_class_loss, intra_class_loss, present_classes
from tests import block_images
from tests.data import test_weakshot_training as weakshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CCS_CONFIG = os.path.join(REPO, "configs", "synthetic", "ccs", "per_pixel_R18_ccs.yaml")
MASKFORMER_CCS_CONFIG = os.path.join(REPO, "configs", "synthetic", "ccs", "maskformer_R18_ccs.yaml")
BASELINE_CONFIG = os.path.join(REPO, "configs", "synthetic", "per_pixel_R18_fully_supervised.yaml")
NUM_CLASSES, DIM, SIZE = 4, 32, 64
TINY = block_images.per_pixel_tiny(NUM_CLASSES, DIM)
R2 = math.sqrt(2.0)


def _cfg(path, *opts):
    return block_images.config(path, TINY, *opts)


def _extra_parameters(c, k):
    """Parameters of CCSClassifier beyond LinearClassifier: MLP 2C->C->C, gate (K), log-scale (1)."""
    return 3 * c * c + 2 * c + k + 1


def _three_class_ccs(**kwargs):
    """C = 2, K = 3, centres w = [1, 0], [0, 2], [1, 1], biases 0.5, 0, -1, logit scale 10."""
    ccs = CCSClassifier(2, 3, **kwargs)
    with torch.no_grad():
        ccs.conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])[..., None, None])
        ccs.conv.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    return ccs


# ----------------------------------------------------------------------------- pure losses


def test_present_classes():
    labels = torch.tensor([[[0, 255], [2, 2]], [[255, 255], [255, 255]]])
    assert present_classes(labels, 3).tolist() == [[True, False, True], [False, False, False]]


def test_inter_class_loss_orthogonal_collinear_and_hand_value():
    everything = torch.ones(1, 2, dtype=torch.bool)
    assert inter_class_loss(torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]), everything).item() == 0.0
    assert inter_class_loss(torch.tensor([[[1.0, 0.0], [2.0, 0.0]]]), everything).item() == pytest.approx(1.0)
    assert inter_class_loss(torch.tensor([[[1.0, 0.0], [-2.0, 0.0]]]), everything).item() == 0.0  # anti-parallel
    assert inter_class_loss(torch.tensor([[[1.0, 0.0], [2.0, 0.0]]]), everything, margin=0.25).item() == pytest.approx(0.75)
    # three centres [1,0], [1,1], [0,1]: ordered pairs cos 1/√2, 0, 1/√2 (twice each) -> mean √2 / 3
    centres = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]).repeat(2, 1, 1)
    assert inter_class_loss(centres[:1], torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(R2 / 3)
    # only present classes pair up; an image with fewer than two present classes is left out of the mean
    classes = torch.tensor([[True, True, False], [False, False, True]])
    assert inter_class_loss(centres, classes).item() == pytest.approx(1 / R2)
    classes = torch.tensor([[True, False, True], [True, True, False]])
    assert inter_class_loss(centres, classes).item() == pytest.approx((0 + 1 / R2) / 2)
    assert inter_class_loss(centres, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_intra_class_loss_hand_values():
    similarity = torch.tensor([[[1.0, 0.5, 0.2]], [[0.0, -0.5, 0.9]]])[None]  # (1, K=2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    assert intra_class_loss(similarity, labels).item() == pytest.approx((0 + 1.5) / 2)
    assert intra_class_loss(similarity, labels, margin=0.6).item() == pytest.approx((0 + 1.1) / 2)
    assert intra_class_loss(similarity, torch.full_like(labels, 255)).item() == 0.0
    # pixels parallel to their own centre cost nothing
    features, centres = torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cos = torch.einsum("pc,kc->kp", features, centres)[None, :, None]  # (1, 2, 1, 2)
    assert intra_class_loss(cos, torch.tensor([[[0, 1]]])).item() == 0.0


# ----------------------------------------------------------------------------- ACCM / CCS maths


def test_scene_adaptive_centres_hand_values():
    base = torch.eye(2)[None]  # (1, K=2, C=2)
    pixels = torch.eye(2)[None]  # (1, C=2, P=2): pixels [1, 0] and [0, 1]
    coarse = torch.zeros(1, 2, 2)  # uniform attention -> pooled centre [0.5, 0.5]; presence 0.5
    take_pooled = lambda z: z[..., 2:]  # noqa: E731  a fusion returning ĉ
    gate = torch.zeros(2)  # σ(0) = 0.5
    gated = scene_adaptive_centres(base, coarse, pixels, take_pooled, gate, presence_gating=True)
    assert torch.allclose(gated, torch.tensor([[[1.125, 0.125], [0.125, 1.125]]]))
    ungated = scene_adaptive_centres(base, coarse, pixels, take_pooled, gate, presence_gating=False)
    assert torch.allclose(ungated, torch.tensor([[[1.25, 0.25], [0.25, 1.25]]]))
    zero = scene_adaptive_centres(base, coarse, pixels, lambda z: torch.zeros_like(z[..., 2:]), gate)
    assert torch.equal(zero, base)


def test_zeroed_adaptation_equals_cosine_classifier():
    ccs = _three_class_ccs().eval()
    features = torch.tensor([[3.0, 0.0], [4.0, -2.0]])[None, :, None]  # (1, C=2, 1, 2): pixels [3,4], [0,-2]
    expected = torch.tensor([[10 * 0.6 + 0.5, 0.0 + 0.5], [10 * 0.8, -10.0], [10 * 1.4 / R2 - 1, -10 / R2 - 1]])
    logits, losses = ccs(features)
    assert logits.shape == (1, 3, 1, 2) and losses == {}
    assert torch.allclose(logits[0, :, 0], expected, atol=1e-5)
    # a non-zero adaptation branch changes the logits; zeroing its last layer gives the cosine classifier back
    nn.init.normal_(ccs.fusion[-1].weight)
    assert not torch.allclose(ccs(features)[0][0, :, 0], expected, atol=1e-3)
    nn.init.zeros_(ccs.fusion[-1].weight)
    nn.init.zeros_(ccs.fusion[-1].bias)
    assert torch.allclose(ccs(features)[0][0, :, 0], expected, atol=1e-5)


def test_losses_through_the_module_hand_values():
    """Orthogonal unit centres; each labelled pixel equals its centre -> intra 0 and inter 0 at init."""
    ccs = CCSClassifier(2, 2, loss_weights={"coarse": 0.4, "intra": 0.5, "inter": 0.5}).train()
    with torch.no_grad():
        ccs.conv.weight.copy_(torch.eye(2)[..., None, None])
    features = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): pixels [1, 0], [0, 1]
    targets = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])  # (1, 2, 4): stride 2 of the features
    logits, losses = ccs(features, targets)
    assert set(losses) == {"loss_ccs_coarse", "loss_ccs_intra", "loss_ccs_inter"}
    assert losses["loss_ccs_intra"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_ccs_inter"].item() == pytest.approx(0.0, abs=1e-6)
    # coarse logits 10·cos upsampled bilinearly (align_corners=False) to 4 columns: class 0 [10, 7.5, 2.5, 0],
    # class 1 [0, 2.5, 7.5, 10]; 7 labelled pixels: 3 with margin 10, 4 with margin 5
    a, b = math.log1p(math.exp(-10.0)), math.log1p(math.exp(-5.0))
    assert losses["loss_ccs_coarse"].item() == pytest.approx(0.4 * (3 * a + 4 * b) / 7, rel=1e-5)
    # collinear centres: inter = 1 (weighted 0.5); the second pixel's cosine to its centre is 0 -> intra 1 · 1/2
    with torch.no_grad():
        ccs.conv.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]])[..., None, None])
    _, losses = ccs(features, targets)
    assert losses["loss_ccs_inter"].item() == pytest.approx(0.5)
    targets_small = torch.tensor([[[0, 1]]])  # at feature size: pixel 2 has cos 0 with class 1 -> intra (0 + 1) / 2
    assert ccs(features, targets_small)[1]["loss_ccs_intra"].item() == pytest.approx(0.5 * 0.5)
    # "all": the pair counts even when only class 0 is labelled
    assert ccs(features, torch.zeros(1, 1, 2, dtype=torch.long))[1]["loss_ccs_inter"].item() == 0.0
    ccs.inter_classes = "all"
    assert ccs(features, torch.zeros(1, 1, 2, dtype=torch.long))[1]["loss_ccs_inter"].item() == pytest.approx(0.5)
    # no losses in inference, without targets, or with zero weights
    assert ccs(features)[1] == {} and ccs.eval()(features, targets)[1] == {}
    skipping = CCSClassifier(2, 2, loss_weights={"coarse": 0.0, "inter": 0.0}).train()
    assert set(skipping(features, targets)[1]) == {"loss_ccs_intra"}


def test_prototypes_replace_the_fixed_centres():
    torch.manual_seed(0)
    ccs = CCSClassifier(4, 3).train()
    nn.init.normal_(ccs.fusion[-1].weight)  # an active adaptation branch
    features = torch.randn(2, 4, 5, 6)
    targets = torch.randint(0, 3, (2, 10, 12))
    fixed, _ = ccs(features)
    same = ccs.conv.weight.reshape(1, 3, 4).expand(2, 3, 4)
    assert torch.allclose(ccs(features, prototypes=same)[0], fixed, atol=1e-6)
    # per-image prototypes: image b is classified against its own, exactly as a one-image batch
    prototypes = torch.randn(2, 3, 4)
    logits, losses = ccs(features, targets, prototypes)
    assert logits.shape == (2, 3, 5, 6) and set(losses) == {"loss_ccs_coarse", "loss_ccs_intra", "loss_ccs_inter"}
    for b in range(2):
        assert torch.allclose(ccs(features[b : b + 1], prototypes=prototypes[b : b + 1])[0], logits[b : b + 1], atol=1e-5)
    # the fixed centres then get no gradient; the prototypes, the bias and the adaptation branch do
    prototypes.requires_grad_(True)
    logits, losses = ccs(features, targets, prototypes)
    (logits.logsumexp(1).mean() + sum(losses.values())).backward()
    assert ccs.conv.weight.grad is None and prototypes.grad.abs().sum() > 0
    assert ccs.conv.bias.grad is not None and ccs.fusion[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        ccs(features, prototypes=torch.randn(2, 4, 4))


def test_pool_stride_is_invariant_to_block_constant_features():
    torch.manual_seed(0)
    full, pooled = CCSClassifier(4, 3).eval(), CCSClassifier(4, 3, pool_stride=2).eval()
    nn.init.normal_(full.fusion[-1].weight)
    pooled.load_state_dict(full.state_dict())
    blocks = torch.randn(2, 4, 3, 4)
    features = blocks.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # constant on 2x2 blocks
    assert torch.allclose(pooled(features)[0], full(features)[0], atol=1e-5)
    odd = torch.randn(1, 4, 5, 7)  # ceil-mode pooling: logits keep the feature size
    logits, losses = pooled.train()(odd, torch.randint(0, 3, (1, 10, 14)))
    assert logits.shape == (1, 3, 5, 7) and all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------- config and model


def test_ccs_is_selected_by_config_and_off_by_default():
    assert "CCSClassifier" in CLASSIFIER_REGISTRY
    cfg = get_cfg()
    add_simformer_config(cfg)
    assert cfg.MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME == "LinearClassifier"
    ccs = cfg.MODEL.CCS
    assert (ccs.INIT_TEMPERATURE, ccs.COARSE_SCALE, ccs.POOL_STRIDE, ccs.INTRA_MARGIN, ccs.INTER_MARGIN) == (0.1, 10.0, 1, 1.0, 0.0)
    assert (ccs.COARSE_WEIGHT, ccs.INTRA_WEIGHT, ccs.INTER_WEIGHT) == (0.4, 0.5, 0.5)
    assert ccs.PRESENCE_GATING and ccs.INTER_CLASSES == "present"
    cfg = _cfg(CCS_CONFIG, "MODEL.CCS.INTER_WEIGHT", "2.0", "MODEL.CCS.INIT_TEMPERATURE", "0.05", "MODEL.CCS.INTER_CLASSES", "all")
    classifier = build_model(cfg).sem_seg_head.classifier
    assert type(classifier).__name__ == "CCSClassifier"
    assert classifier.loss_weights == {"coarse": 0.4, "intra": 0.5, "inter": 2.0}
    assert classifier.scale.item() == pytest.approx(20.0) and classifier.inter_classes == "all"
    for key, value in [("INIT_TEMPERATURE", "0.001"), ("INTER_CLASSES", "'some'"), ("POOL_STRIDE", "0"), ("INTRA_WEIGHT", "-1.0")]:
        bad = _cfg(CCS_CONFIG, f"MODEL.CCS.{key}", value)
        with pytest.raises(ValueError, match=f"MODEL\\.CCS\\.{key}"):
            build_classifier(bad, DIM, NUM_CLASSES)


@pytest.mark.parametrize("channels, classes", [(128, 12), (256, 171), (DIM, NUM_CLASSES)])
def test_parameter_increase_over_the_linear_classifier(channels, classes):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    linear = CLASSIFIER_REGISTRY.get("LinearClassifier")(channels, classes)
    assert count(CCSClassifier(channels, classes)) - count(linear) == _extra_parameters(channels, classes)
    if channels == DIM:  # inside the per-pixel model, the classifier is the only difference
        ccs, baseline = build_model(_cfg(CCS_CONFIG)), build_model(_cfg(BASELINE_CONFIG))
        assert count(ccs) - count(baseline) == _extra_parameters(DIM, NUM_CLASSES)


def test_linear_baseline_checkpoint_initialises_the_centres():
    baseline, ccs = build_model(_cfg(BASELINE_CONFIG)), build_model(_cfg(CCS_CONFIG))
    incompatible = ccs.load_state_dict(baseline.state_dict(), strict=False)
    prefix = "sem_seg_head.classifier."
    new = {prefix + n for n in ["fusion.0.weight", "fusion.0.bias", "fusion.2.weight", "fusion.2.bias", "gate", "log_scale"]}
    assert set(incompatible.missing_keys) == new and not incompatible.unexpected_keys
    assert torch.equal(ccs.sem_seg_head.classifier.conv.weight, baseline.sem_seg_head.classifier.conv.weight)


def _batch(seed, n=2):
    """Block images with one unlabelled (255) strip (tests/block_images.py)."""
    return block_images.block_batch(seed, n, SIZE, NUM_CLASSES)


def test_ccs_per_pixel_model_trains():
    torch.manual_seed(0)
    cfg = _cfg(CCS_CONFIG)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    classifier = model.sem_seg_head.classifier
    batch = _batch(0)
    history, losses = block_images.train_steps(model, optimizer, [batch] * 4)  # asserts finite losses
    assert set(losses) == {"loss_sem_seg", "loss_ccs_coarse", "loss_ccs_intra", "loss_ccs_inter"}
    assert history[-1] < history[0], history
    assert classifier.fusion[-1].weight.abs().sum() > 0  # the adaptation branch left its zero init
    assert classifier.gate.grad is not None and classifier.gate.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"], "height": SIZE, "width": SIZE} for x in _batch(1, n=1)])
    assert out[0]["sem_seg"].shape == (NUM_CLASSES, SIZE, SIZE)


MASKFORMER_TINY = [
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NHEADS", "4",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "6",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2",
]  # fmt: skip


def test_ccs_as_pixel_classifier_of_maskformer_trains():
    """MaskFormer's pixel classification layer: CCS gets per-image prototypes from the queries as centres."""
    torch.manual_seed(0)
    cfg = _cfg(MASKFORMER_CCS_CONFIG, *MASKFORMER_TINY)
    model = build_model(cfg).train()
    classifier = model.sem_seg_head.pixel_classifier
    assert type(classifier).__name__ == "CCSClassifier"
    optimizer = build_optimizer(cfg, model)
    batch = []
    for x in _batch(0):
        classes, masks = label_map_to_targets(x["sem_seg"], 255)
        instances = Instances((SIZE, SIZE))
        instances.gt_classes, instances.gt_masks = classes, masks
        batch.append({"image": x["image"], "instances": instances, "height": SIZE, "width": SIZE})
    pixel_terms = {"loss_pixel_ce", "loss_ccs_coarse", "loss_ccs_intra", "loss_ccs_inter"}
    for _ in range(3):
        losses = model(batch)
        assert pixel_terms <= set(losses) and "loss_ce" in losses
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        # centres come from the queries: the fixed 1x1 centres get no gradient, the adaptation branch does
        assert classifier.conv.weight.grad is None and classifier.fusion[-1].weight.grad.abs().sum() > 0
        optimizer.step()
    assert classifier.fusion[-1].weight.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"], "height": SIZE, "width": SIZE} for x in _batch(1, n=1)])
    assert out[0]["sem_seg"].shape == (NUM_CLASSES, SIZE, SIZE) and torch.isfinite(out[0]["sem_seg"]).all()


@pytest.fixture
def weakshot_name(tmp_path, name):
    weakshot._write_dataset(str(tmp_path), n=2)
    register_simulated_weakshot(name, str(tmp_path / "images"), str(tmp_path / "full"), weakshot.CLASSES, weakshot.NOVEL)
    return name


def test_ccs_as_pixel_classifier_of_weakshot_simformer_trains(weakshot_name):
    """Weak-shot SimFormer: novel pixels are ignore, so only base classes get centre / intra / inter terms."""
    torch.manual_seed(0)
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(MASKFORMER_CCS_CONFIG)
    cfg.merge_from_list(weakshot.TINY + ["MODEL.META_ARCHITECTURE", "SimFormer", "DATASETS.TRAIN", f"('{weakshot_name}',)"])
    cfg.merge_from_list(["INPUT.DATASET_MAPPER_NAME", "WeakShotDatasetMapper", "SOLVER.BASE_LR", "1e-3"])
    mapper = build_mapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(weakshot_name)[:2]]
    novel = [weakshot.CLASSES.index(c) for c in weakshot.NOVEL]
    model = build_model(cfg).train()
    classifier = model.sem_seg_head.pixel_classifier
    seen = []
    original = classifier.losses
    classifier.losses = lambda coarse, sim, centres, targets: seen.append(targets) or original(coarse, sim, centres, targets)
    optimizer = build_optimizer(cfg, model)
    for _ in range(2):
        losses = model(batch)
        assert {"loss_pixel_ce", "loss_ccs_coarse", "loss_ccs_intra", "loss_ccs_inter"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert classifier.fusion[-1].weight.abs().sum() > 0
    present = present_classes(seen[0], len(weakshot.CLASSES))
    assert present.any() and not present[:, novel].any()
