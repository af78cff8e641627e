"""ssa_adapter.SSAClassifier: shapes for shared and per-image prototypes, bounded logits, parameter
counts, the training-only teacher, and the weighted loss dict."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ssa_adapter import DEFAULT_LOSS_WEIGHTS, SSAClassifier, drop_teachers, inference_parameter_increase
from ssa_adapter.losses import cross_entropy, dice_loss, downsample_labels, label_boundaries, relation_distillation, response_distillation, spatial_distillation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
B, C, K, H, W = 2, 8, 5, 6, 7


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g), torch.randn(K, C, generator=g), torch.randn(K, generator=g)


def _labels(seed=0, size=(4 * H, 4 * W)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K - 1, (B,) + size, generator=g)  # class K-1 is absent
    labels[:, :3] = 255
    return labels


def test_no_detectron2_import():
    code = "import sys, ssa_adapter; bad = [m for m in sys.modules if m.split('.')[0] in ('detectron2', 'simformer')]; assert not bad, bad"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("per_image", [False, True])
def test_shapes_and_logits_bounded_by_tau(per_image):
    torch.manual_seed(0)
    model = SSAClassifier(C, K, tau=15.0).eval()
    feats, protos, bias = _inputs()
    if per_image:
        protos = torch.stack([protos, 2 * protos])  # (B, K, C)
        bias = bias.expand(B, K)
    logits, aux = model(100 * feats, protos, bias)
    assert logits.shape == (B, K, H, W) and logits.dtype == torch.float32
    assert logits.abs().max() <= 15.0 + 1e-4
    assert aux["coarse_logits"].shape == (B, K, H, W)
    assert aux["semantic_prototypes"].shape == aux["spatial_prototypes"].shape == aux["prototypes"].shape == (B, K, C)
    assert aux["position_features"].shape == aux["pixels"].shape == (B, C, H, W)
    assert torch.allclose(aux["pixels"].norm(dim=1, keepdim=True) * aux["pixel_inv_norm"], torch.ones(B, 1, H, W), atol=1e-5)


def test_per_image_prototypes_equal_shared_ones_when_identical():
    torch.manual_seed(0)
    model = SSAClassifier(C, K).eval()
    feats, protos, bias = _inputs()
    shared, _ = model(feats, protos, bias)
    per_image, _ = model(feats, protos.expand(B, K, C).clone(), bias.expand(B, K))
    assert torch.allclose(shared, per_image, atol=1e-5)
    # coarse mask given from outside (e.g. MaskFormer's semantic inference) replaces W . S_f + b
    coarse = torch.einsum("kc,bchw->bkhw", protos, feats) + bias[:, None, None]
    given, _ = model(feats, protos, coarse_logits=coarse)
    assert torch.allclose(shared, given, atol=1e-5)


def test_each_image_adapts_with_its_own_prototypes():
    torch.manual_seed(0)
    model = SSAClassifier(C, K).eval()
    feats, protos, _ = _inputs()
    feats = feats[:1].expand(B, -1, -1, -1)
    logits, _ = model(feats, torch.stack([protos, -protos]))
    assert not torch.allclose(logits[0], logits[1])
    alone, _ = model(feats[:1], protos[None])
    assert torch.allclose(logits[:1], alone, atol=1e-5)


def test_bad_prototype_shapes_rejected():
    model = SSAClassifier(C, K)
    feats, protos, _ = _inputs()
    with pytest.raises(ValueError, match="do not match"):
        model(feats, protos[:, :-1])
    with pytest.raises(ValueError, match="do not match"):
        model(feats, protos.expand(B + 1, K, C))
    with pytest.raises(ValueError, match=r"\(K, C\) or \(B, K, C\)"):
        model(feats, protos[None, None])
    with pytest.raises(ValueError, match="unknown SSA loss terms"):
        SSAClassifier(C, K, loss_weights={"kd": 1.0})


@pytest.mark.parametrize("channels,classes", [(8, 5), (16, 3), (256, 171)])
def test_parameter_count_formula(channels, classes):
    inference = SSAClassifier(channels, classes, with_teacher=False)
    assert sum(p.numel() for p in inference.parameters()) == inference_parameter_increase(channels, classes)
    assert inference_parameter_increase(channels, classes) == 4 * channels**2 + classes * channels + 12 * channels
    training = SSAClassifier(channels, classes)
    assert sum(p.numel() for p in training.teacher.parameters()) == 4 * channels**2 + 2 * channels


def test_runs_in_fp32_under_autocast():
    model = SSAClassifier(C, K)
    feats, protos, bias = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = model(feats.bfloat16(), protos, bias)
        losses = model.losses(logits, aux, _labels())
    assert logits.dtype == torch.float32 and all(v.dtype == torch.float32 for v in losses.values())


def test_losses_are_the_weighted_pure_terms():
    torch.manual_seed(0)
    model = SSAClassifier(C, K, boundary_width=3, boundary_border=1)
    feats, protos, bias = _inputs()
    labels = _labels()
    logits, aux = model(feats, protos, bias)
    losses = model.losses(logits, aux, labels)
    assert set(losses) == {f"loss_ssa_{t}" for t in DEFAULT_LOSS_WEIGHTS}
    assert DEFAULT_LOSS_WEIGHTS == {"coarse": 1.0, "dice": 1.0, "teacher_ce": 1.0, "teacher_dice": 1.0, "rd": 1.0, "sd": 10.0, "pd": 0.4}

    def up(x):
        return F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)

    small = downsample_labels(labels, (H, W))
    t_logits, t_sem, t_spa = model.teacher(aux["features"], aux["position_features"], aux["pixels"], aux["pixel_inv_norm"], aux["prototypes"], model.position_basis.weight, small)
    expected = {
        "coarse": cross_entropy(up(aux["coarse_logits"]), labels),
        "dice": dice_loss(up(logits), labels),
        "teacher_ce": cross_entropy(up(t_logits), labels),
        "teacher_dice": dice_loss(up(t_logits), labels),
        "rd": response_distillation(logits, t_logits, small, label_boundaries(small, 3, 1)),
        "sd": relation_distillation(aux["semantic_prototypes"], t_sem),
        "pd": spatial_distillation(aux["spatial_prototypes"], t_spa),
    }
    for term, value in expected.items():
        assert torch.allclose(losses[f"loss_ssa_{term}"], DEFAULT_LOSS_WEIGHTS[term] * value, atol=1e-5), term

    reweighted = SSAClassifier(C, K, loss_weights={"sd": 1.0, "pd": 0.0, "coarse": 0.0})
    reweighted.load_state_dict(model.state_dict())
    out = reweighted.losses(*reweighted(feats, protos, bias), labels)
    assert "loss_ssa_pd" not in out and "loss_ssa_coarse" not in out
    assert torch.allclose(out["loss_ssa_sd"], losses["loss_ssa_sd"] / 10, atol=1e-6)


def test_gradients_of_teacher_losses_and_stop_gradient_of_targets():
    torch.manual_seed(0)
    model = SSAClassifier(C, K)
    feats, protos, bias = _inputs()
    logits, aux = model(feats, protos, bias)
    losses = model.losses(logits, aux, _labels())
    # the distillation terms train the student only: teacher targets are detached
    distill = losses["loss_ssa_rd"] + losses["loss_ssa_sd"] + losses["loss_ssa_pd"]
    grads = torch.autograd.grad(distill, list(model.teacher.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # the teacher is trained by its own CE + dice
    teacher_loss = losses["loss_ssa_teacher_ce"] + losses["loss_ssa_teacher_dice"]
    grads = torch.autograd.grad(teacher_loss, list(model.teacher.parameters()))
    assert all(torch.count_nonzero(g) > 0 for g in grads)


def test_teacher_only_in_training_and_not_exported():
    torch.manual_seed(0)
    model = SSAClassifier(C, K)
    calls = []
    model.teacher.register_forward_hook(lambda *args: calls.append(1))
    feats, protos, bias = _inputs()
    with torch.no_grad():
        reference, _ = model.eval()(feats, protos, bias)
    assert not calls  # inference never runs the teacher
    model.train()
    model.losses(*model(feats, protos, bias), _labels())
    assert calls

    state = model.state_dict()
    assert any(k.startswith("teacher.") for k in state)
    deploy = SSAClassifier(C, K, with_teacher=False)
    incompatible = deploy.load_state_dict(state)  # strict: the teacher keys are dropped, not unexpected
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not any(k.startswith("teacher.") for k in deploy.state_dict())
    with torch.no_grad():
        assert torch.equal(deploy.eval()(feats, protos, bias)[0], reference)
    assert set(deploy.losses(*deploy(feats, protos, bias), _labels())) == {"loss_ssa_coarse", "loss_ssa_dice"}

    wrapper = torch.nn.ModuleDict({"a": model, "b": SSAClassifier(C, K)})
    assert drop_teachers(wrapper) == 2 and model.teacher is None
    assert not any(".teacher." in k for k in wrapper.state_dict())
