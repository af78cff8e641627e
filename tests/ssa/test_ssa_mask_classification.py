"""SSA as the pixel classification layer of the mask-classification model (spec §9.2 "B2", §9.3):
prototypes pooled from the queries, dense labels from the mask targets, semantic-map choices, novel
classes without teacher targets, and a few training steps for MaskFormer and weak-shot SimFormer."""
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from simformer import add_simformer_config
from simformer.data.dataset_mappers import build_mapper
from simformer.data.datasets.weakshot import register_simulated_weakshot
from simformer.engine import build_optimizer
from simformer.inference import semantic_inference
from simformer.modeling.classifiers import CLASSIFIER_REGISTRY
from simformer.modeling.pixel_classification import (
    fuse_semantic_maps,
    label_map_from_targets,
    novel_tag_region,
    pixel_class_scores,
    query_class_prototypes,
    tagged_region_loss,
)
from ssa_adapter import DEFAULT_LOSS_WEIGHTS, inference_parameter_increase
from ssa_adapter.losses import present_classes, relation_distillation, spatial_distillation
from ssa_adapter.teacher import SSATeacher, inverse_norm
from tests import block_images
from tests.data.test_weakshot_training import CLASSES, NOVEL, _write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASKFORMER_SSA = os.path.join(REPO, "configs", "synthetic", "ssa", "maskformer_R18_ssa.yaml")
SEG_SSA = os.path.join(REPO, "configs", "synthetic", "simformer", "seg_ssa.yaml")
PER_PIXEL = os.path.join(REPO, "configs", "synthetic", "per_pixel_R18_fully_supervised.yaml")
IGNORE = 255
K, DIM, SIZE = 5, 32, 64
TINY = block_images.maskformer_tiny(K, DIM) + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.CROP.SIZE", "(48, 48)",
    "INPUT.PAD_TO_SIZE", "64",
]  # fmt: skip
SSA_KEYS = {f"loss_ssa_{t}" for t in DEFAULT_LOSS_WEIGHTS}


def _cfg(path, *opts):
    return block_images.config(path, TINY, *opts)


def _batch(seed, n=2):
    """Block images with mask targets and a 255 strip (tests/block_images.py)."""
    return block_images.block_batch(seed, n, SIZE, K, colour=(50, 40), ignore=IGNORE, instances=True)


# ------------------------------------------------------------------------------------------ pure functions
def test_query_class_prototypes_hand_computed():
    # p_q over (class 0, class 1, no object): q0 = (.6, .2, .2), q1 = (.2, .6, .2)
    logits = torch.log(torch.tensor([[[0.6, 0.2, 0.2], [0.2, 0.6, 0.2]]]))
    embed = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    protos = query_class_prototypes(logits, embed)
    # alpha_{.,0} = (.6, .2) / .8 = (.75, .25); alpha_{.,1} = (.25, .75)
    assert protos.shape == (1, 2, 2)
    assert torch.allclose(protos, torch.tensor([[[0.75, 0.25], [0.25, 0.75]]]), atol=1e-5)
    # invariant to the query order and to a shift of the logits; each image uses only its own queries
    perm = torch.tensor([1, 0])
    assert torch.allclose(query_class_prototypes(logits[:, perm] + 3.0, embed[:, perm]), protos, atol=1e-5)
    both = query_class_prototypes(torch.cat([logits, logits.flip(-1)]), torch.cat([embed, 5 * embed]))
    assert torch.allclose(both[:1], protos, atol=1e-5) and not torch.allclose(both[1], protos[0])


def test_label_map_from_targets():
    masks = torch.zeros(3, 2, 3)
    masks[0, 0, :2] = 1  # class 4 (base)
    masks[1, 1, :] = 1  # class 1 (base)
    masks[2, 0, 2] = 1  # class 3: no pixel mask (weak-shot novel, image-level label only)
    targets = [
        {"labels": torch.tensor([4, 1, 3]), "masks": masks, "has_mask": torch.tensor([True, True, False])},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 2, 3)},
    ]
    maps = label_map_from_targets(targets, IGNORE)
    assert maps.dtype == torch.int64
    assert maps.tolist() == [[[4, 4, IGNORE], [1, 1, 1]], [[IGNORE] * 3, [IGNORE] * 3]]


def test_novel_tag_region_and_tagged_region_loss():
    masks = torch.zeros(3, 2, 3)
    masks[0, 0, :2] = 1  # class 0 (base)
    pad = torch.zeros(2, 3, dtype=torch.bool)
    pad[:, 2] = True
    targets = [
        {"labels": torch.tensor([0, 2, 3]), "masks": masks, "has_mask": torch.tensor([True, False, False]), "pad": pad},
        {"labels": torch.tensor([0]), "masks": masks[:1], "has_mask": torch.tensor([True]), "pad": pad},
    ]
    tags, region = novel_tag_region(targets, 4)
    assert tags.tolist() == [[False, False, True, True], [False, False, False, False]]
    assert region.tolist() == [[[False, False, False], [True, True, False]]] * 2
    with pytest.raises(KeyError, match="NOVEL_WEIGHT"):
        novel_tag_region([{k: v for k, v in targets[0].items() if k != "pad"}], 4)
    # softmax probabilities per pixel (4 classes); loss = mean over image 0's 2 region pixels of -log(p2 + p3)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = torch.log(probs).view(1, 4, 1, 1).expand(2, 4, 2, 3).clone()
    logits[0, :, 1, 1] = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    expected = -(math.log(0.7) + math.log(0.2)) / 2
    assert tagged_region_loss(logits, tags, region).item() == pytest.approx(expected, abs=1e-5)
    # one tag = the CE to that class; no tagged image = 0 with finite gradients
    one = torch.tensor([[False, False, True, False], [False] * 4])
    assert tagged_region_loss(logits, one, region).item() == pytest.approx(-(math.log(0.3) + math.log(0.1)) / 2, abs=1e-5)
    logits.requires_grad_(True)
    loss = tagged_region_loss(logits, torch.zeros(2, 4, dtype=torch.bool), region)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(logits.grad).all()


def test_fusion_rule_and_pixel_scores():
    mf = torch.tensor([0.8, 0.1, 0.0]).view(1, 3, 1, 1)
    pix = torch.tensor([0.2, 0.4, 0.4]).view(1, 3, 1, 1)
    fused = fuse_semantic_maps(mf, pix, 0.5)
    assert torch.allclose(fused.flatten(), torch.tensor([0.4, 0.2, math.sqrt(1e-6 * 0.4)]), atol=1e-6)
    assert torch.allclose(fuse_semantic_maps(mf, pix, 0.0), mf.clamp(min=1e-6))
    # a per-pixel rescaling of MaskFormer's map does not change the fused argmax
    rng = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 4, 3, 3, generator=rng), torch.rand(2, 4, 3, 3, generator=rng)
    scale = torch.rand(2, 1, 3, 3, generator=rng) + 0.1
    assert torch.equal(fuse_semantic_maps(a, b, 0.3).argmax(1), fuse_semantic_maps(a * scale, b, 0.3).argmax(1))
    with pytest.raises(ValueError, match="FUSION_WEIGHT"):
        fuse_semantic_maps(a, b, 1.5)
    scores = pixel_class_scores(torch.randn(2, 4, 3, 3, generator=rng), (12, 12))
    assert scores.shape == (2, 4, 12, 12) and torch.allclose(scores.sum(1), torch.ones(2, 12, 12), atol=1e-5)


# ------------------------------------------------------------------------------------------ novel classes
def test_distillation_ignores_classes_without_ground_truth():
    rng = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 6, generator=rng), torch.randn(2, 4, 6, generator=rng)
    labels = torch.tensor([[[0, 1], [IGNORE, 1]], [[2, 2], [2, IGNORE]]])
    present = present_classes(labels, 4, IGNORE)
    assert present.tolist() == [[True, True, False, False], [False, False, True, False]]
    other = teacher.clone()
    other[~present] = torch.randn(int((~present).sum()), 6, generator=rng)  # new teacher rows for absent classes
    for loss in (lambda t, p: relation_distillation(student, t, 1.0, p), lambda t, p: spatial_distillation(student, t, p)):
        assert torch.allclose(loss(teacher, present), loss(other, present))
        assert not torch.allclose(loss(teacher, None), loss(other, None))  # official: all K classes
    # L_pd hand check: the mean over the present (image, class) pairs only
    per_class = -(torch.softmax(teacher, -1) * torch.log_softmax(student, -1)).sum(-1)
    assert torch.allclose(spatial_distillation(student, teacher, present), per_class[present].mean())
    # no present class anywhere: 0, not NaN
    none = torch.zeros(2, 4, dtype=torch.bool)
    assert relation_distillation(student, teacher, 1.0, none) == 0 and spatial_distillation(student, teacher, none) == 0


def test_teacher_target_of_a_class_without_labels_ignores_the_features():
    """A class with no labelled pixel (weak-shot novel: ignore) gets the fallback teacher prototypes
    W + g phi([sg W ; W]) and basis row: nothing of the features, so no teacher target for it."""
    torch.manual_seed(0)
    b, c, k = 2, 6, 3
    teacher = SSATeacher(c, k, hidden_dim=3, semantic_gate=0.1)
    feats = torch.randn(b, c, 4, 4, requires_grad=True)
    pos = torch.randn(b, c, 4, 4, requires_grad=True)
    pixels = feats + pos
    protos, basis = torch.randn(b, k, c), torch.randn(b, k, c)  # per-image prototypes and basis
    labels = torch.randint(0, 2, (b, 4, 4))  # class 2 (novel) is never labelled
    labels[:, 0] = IGNORE
    _, semantic, spatial = teacher(feats, pos, pixels, inverse_norm(pixels), protos, basis, labels)
    fallback = protos[:, 2] + teacher.semantic_gate * teacher.semantic_fuse(torch.cat([protos[:, 2], protos[:, 2]], -1))
    assert torch.allclose(semantic[:, 2], fallback, atol=1e-6)
    assert torch.allclose(spatial[:, 2], teacher.spatial_fuse(torch.cat([basis[:, 2], basis[:, 2]], -1)), atol=1e-6)
    grads = torch.autograd.grad((semantic[:, 2].sum() + spatial[:, 2].sum()), (feats, pos), allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in grads)
    grads = torch.autograd.grad(semantic[:, 0].sum() + spatial[:, 0].sum(), (feats, pos))
    assert all(g.abs().sum() > 0 for g in grads)  # a labelled class does depend on them


# ------------------------------------------------------------------------------------------ the classifier seam
def test_ssa_classifier_with_per_image_prototypes():
    cfg = _cfg(MASKFORMER_SSA, "MODEL.SSA.POSITION_BASIS", "prototypes", "MODEL.SSA.SEMANTIC_UPDATE", "residual")
    torch.manual_seed(0)
    clf = CLASSIFIER_REGISTRY.get("SSAClassifier")(cfg, DIM, K)
    # a C x C basis map instead of the K x C table, plus the scalar gate (the teacher has its own)
    inference = sum(p.numel() for n, p in clf.ssa.named_parameters() if not n.startswith("teacher."))
    assert inference == inference_parameter_increase(DIM, K, position_basis="prototypes", semantic_gate=True) == 5 * DIM**2 + 12 * DIM + 1
    assert not hasattr(clf.ssa, "position_basis") and sum(p.numel() for p in clf.ssa.teacher.parameters()) == 4 * DIM**2 + 2 * DIM + 1
    feats = torch.randn(2, DIM, 6, 6)
    protos = torch.randn(2, K, DIM)
    targets = torch.randint(0, K - 1, (2, 24, 24))
    targets[:, :4] = IGNORE
    clf.train()
    logits, losses = clf(feats, targets, protos)
    assert logits.shape == (2, K, 6, 6) and logits.abs().max() <= cfg.MODEL.SSA.TAU + 1e-4
    assert set(losses) == SSA_KEYS and all(torch.isfinite(v) for v in losses.values())
    assert clf(feats, None, protos)[1] == {}
    clf.eval()
    logits, losses = clf(feats, targets, protos)
    assert losses == {}
    # each image is classified with its own prototypes only
    other = protos.clone()
    other[1] = torch.randn(K, DIM)
    changed, _ = clf(feats, None, other)
    assert torch.allclose(changed[0], logits[0], atol=1e-5) and not torch.allclose(changed[1], logits[1])
    # without per-image prototypes it falls back to its 1x1 conv weight (the per-pixel placement)
    shared, _ = clf(feats)
    assert torch.allclose(shared, clf(feats, None, clf.conv.weight.reshape(K, DIM).expand(2, K, DIM))[0], atol=1e-5)


# ------------------------------------------------------------------------------------------ model
def test_off_by_default_and_config_errors():
    cfg = get_cfg()
    add_simformer_config(cfg)
    pc = cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER
    assert pc.NAME == "" and pc.SEMANTIC_MAP == "maskformer"
    base = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
    model = build_model(_cfg(base)).eval()
    assert model.sem_seg_head.pixel_classifier is None
    with torch.no_grad():
        out = model.sem_seg_head(model.backbone(torch.zeros(1, 3, 64, 64)))
    assert "pixel_logits" not in out and out["mask_embed"].shape == (1, 6, DIM)
    with pytest.raises(ValueError, match="PIXEL_CLASSIFIER.NAME"):
        build_model(_cfg(base, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP", "fusion"))
    with pytest.raises(ValueError, match="SEMANTIC_MAP"):
        build_model(_cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP", "mean"))
    with pytest.raises(KeyError, match="PIXEL_CLASSIFIER.NAME"):
        build_model(_cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME", "SSA"))
    with pytest.raises(ValueError, match="POSITION_BASIS"):
        build_model(_cfg(MASKFORMER_SSA, "MODEL.SSA.POSITION_BASIS", "sine"))


@pytest.mark.parametrize("decoder", ["StandardTransformerDecoder", "MaskedAttentionTransformerDecoder"])
def test_semantic_maps_from_one_checkpoint(decoder):
    torch.manual_seed(0)
    model = build_model(_cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", decoder)).eval()
    inputs = [{"image": x["image"], "height": SIZE, "width": SIZE} for x in _batch(1, n=2)]
    with torch.no_grad():
        out = model.sem_seg_head(model.backbone(model.preprocess_image(inputs).tensor))
        assert out["mask_embed"].shape == (2, 6, DIM) and out["pixel_logits"].shape == (2, K, SIZE // 4, SIZE // 4)
        size = (SIZE, SIZE)
        maskformer = semantic_inference(out["pred_logits"], torch.nn.functional.interpolate(out["pred_masks"], size=size, mode="bilinear", align_corners=False))
        pixel = torch.softmax(torch.nn.functional.interpolate(out["pixel_logits"], size=size, mode="bilinear", align_corners=False), 1)
        expected = {"maskformer": maskformer, "pixel": pixel, "fusion": (maskformer.clamp(min=1e-6) * pixel.clamp(min=1e-6)).sqrt()}
        for semantic_map, scores in expected.items():
            # the same weights under each SEMANTIC_MAP (state dicts are identical)
            other = build_model(_cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", decoder, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP", semantic_map)).eval()
            other.load_state_dict(model.state_dict())
            assert torch.allclose(other.semantic_scores(out, size), scores, atol=1e-5), semantic_map
            result = other(inputs)
            assert result[0]["sem_seg"].shape == (K, SIZE, SIZE)
            assert torch.allclose(result[0]["sem_seg"], scores[0], atol=1e-4), semantic_map


def _train(model, cfg, batches):
    model.train()
    optimizer = build_optimizer(cfg, model)
    teacher = model.sem_seg_head.pixel_classifier.ssa.teacher
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    history, losses = block_images.train_steps(model, optimizer, batches)
    assert {"loss_pixel_ce"} | SSA_KEYS <= set(losses), sorted(losses)
    assert history[-1] < history[0], history
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    return losses


def test_maskformer_with_ssa_pixel_classifier_trains():
    torch.manual_seed(0)
    cfg = _cfg(MASKFORMER_SSA)
    model = build_model(cfg)
    batch = _batch(0)
    losses = _train(model, cfg, [batch] * 4)
    assert set(losses) == set(model.weight_dict) | {"loss_pixel_ce"} | SSA_KEYS
    # the pixel losses reach the query decoder through the prototypes
    model.zero_grad()
    model(batch)["loss_pixel_ce"].backward()
    assert model.sem_seg_head.predictor.mask_embed.layers[-1].weight.grad.abs().sum() > 0


def test_weakshot_simformer_with_ssa_pixel_classifier_trains(tmp_path, name):
    _write_dataset(str(tmp_path), n=4)
    register_simulated_weakshot(name, str(tmp_path / "images"), str(tmp_path / "full"), CLASSES, NOVEL)
    cfg = _cfg(SEG_SSA, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(len(CLASSES)))
    cfg.DATASETS.TRAIN = (name,)
    novel = [CLASSES.index(c) for c in NOVEL]
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(name)
    batch = [mapper(d) for d in dicts[:2]]
    torch.manual_seed(0)
    model = build_model(cfg)
    # novel pixels are ignore in the classifier's labels: no teacher target, no CE for novel classes
    labels = label_map_from_targets(model.prepare_targets(batch, model.preprocess_image(batch)), IGNORE)
    assert not torch.isin(labels, torch.tensor(novel)).any() and (labels != IGNORE).any()
    assert any(torch.isin(x["sem_seg_raw"], torch.tensor(novel)).any() for x in batch)
    losses = _train(model, cfg, [batch] * 4)
    assert "loss_comp" in losses and "loss_comp_0" in losses and losses["loss_pixel_novel"] > 0


ALL_CLASSIFIERS = sorted(k for k, _ in CLASSIFIER_REGISTRY)


def test_every_registered_classifier_is_tested_in_both_slots():
    assert {"LinearClassifier", "SSAClassifier", "CCSClassifier"} <= set(ALL_CLASSIFIERS)


@pytest.mark.parametrize("prototypes", ["queries", "learned"])
@pytest.mark.parametrize("classifier", ALL_CLASSIFIERS)
def test_every_trainable_parameter_gets_a_gradient(classifier, prototypes):
    """Every registered classifier works as the pixel classification layer (LinearClassifier used to raise
    TypeError there). DistributedDataParallel (find_unused_parameters=False) needs a gradient for every
    trainable parameter: the classifier's fixed prototype weight, replaced by the per-image prototypes, must
    be frozen."""
    torch.manual_seed(0)
    cfg = _cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME", classifier, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.PROTOTYPES", prototypes)
    model = build_model(cfg)
    model.train()
    sum(model(_batch(0)).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # "learned": the classifier's own class weights are the prototypes, so they are trained
    assert model.sem_seg_head.pixel_classifier.conv.weight.requires_grad == (prototypes == "learned")
    assert model.sem_seg_head.pixel_classifier.conv.bias.grad is not None


def test_learned_prototypes_ignore_the_queries():
    """PROTOTYPES "learned": the pixel logits are the classifier applied to mask_features with its own weights
    (the per-pixel placement), whatever the queries say; a bad value names the key."""
    torch.manual_seed(0)
    model = build_model(_cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.PROTOTYPES", "learned")).eval()
    head = model.sem_seg_head
    x = model.preprocess_image([{"image": b["image"]} for b in _batch(2)]).tensor
    with torch.no_grad():
        features = model.backbone(x)
        out = head(features)
        assert torch.allclose(out["pixel_logits"], head.pixel_classifier(out["mask_features"])[0], atol=1e-5)
        head.predictor.class_embed.weight.mul_(-3.0)  # other query class probabilities -> other query prototypes
        changed = head(features)
    assert not torch.allclose(changed["pred_logits"], out["pred_logits"])
    assert torch.allclose(changed["pixel_logits"], out["pixel_logits"], atol=1e-5)
    with pytest.raises(ValueError, match="PIXEL_CLASSIFIER.PROTOTYPES"):
        build_model(_cfg(MASKFORMER_SSA, "MODEL.MASK_FORMER.PIXEL_CLASSIFIER.PROTOTYPES", "image"))


@pytest.mark.parametrize("classifier", ALL_CLASSIFIERS)
def test_every_registered_classifier_in_the_per_pixel_head(classifier):
    """The other slot: the per-pixel head's classifier (no prototypes; its own weights are trained)."""
    torch.manual_seed(0)
    cfg = block_images.config(PER_PIXEL, block_images.per_pixel_tiny(K, DIM), "MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME", classifier)
    model = build_model(cfg)
    model.train()
    sum(model(_batch(0)).values()).backward()
    assert model.sem_seg_head.classifier.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": _batch(1)[0]["image"], "height": SIZE, "width": SIZE}])
    assert out[0]["sem_seg"].shape == (K, SIZE, SIZE)


def test_linear_prototype_logits_hand_computed():
    clf = CLASSIFIER_REGISTRY.get("LinearClassifier")(_cfg(MASKFORMER_SSA), 2, 2)
    clf.expect_prototypes()
    with torch.no_grad():
        clf.conv.bias.copy_(torch.tensor([0.5, -1.0]))
    feats = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1)
    protos = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    logits, losses = clf(feats, None, protos)
    assert torch.allclose(logits.flatten(), torch.tensor([1.5, 2.0])) and losses == {}
    assert not clf.conv.weight.requires_grad and clf.conv.bias.requires_grad
