"""Point-sampled mask losses and matching costs (MODEL.MASK_FORMER.TRAIN_NUM_POINTS > 0) against the
full-resolution ones: point reads, uncertainty selection, agreement in expectation, memory."""
import pytest
import torch
from torch.nn import functional as F

from simformer.modeling.criterion import SetCriterion
from simformer.modeling.losses.point_sampling import point_sample, uncertain_point_coords
from simformer.modeling.matcher import HungarianMatcher


def _smooth_example(m=4, h=16, big=64, seed=0):
    """(1, m, h, h) smooth mask logits and (m, big, big) binary target masks, matched one to one."""
    g = torch.Generator().manual_seed(seed)
    pred = F.interpolate(3 * torch.randn(1, m, 4, 4, generator=g), size=(h, h), mode="bilinear", align_corners=False)
    tgt = (F.interpolate(torch.randn(1, m, 4, 4, generator=g), size=(big, big), mode="bilinear", align_corners=False)[0] > 0).float()
    outputs = {"pred_logits": torch.zeros(1, m, 3), "pred_masks": pred}
    targets = [{"labels": torch.zeros(m, dtype=torch.long), "masks": tgt}]
    return outputs, targets, [(torch.arange(m), torch.arange(m))]


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd keeps for backward while ``fn()`` runs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def test_point_sample_reads_pixel_centres_like_interpolate():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 5, 7, generator=g)
    big = F.interpolate(maps, size=(10, 14), mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid((torch.arange(10) + 0.5) / 10, (torch.arange(14) + 0.5) / 14, indexing="ij")
    coords = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(2, -1, -1)
    assert torch.allclose(point_sample(maps, coords), big.flatten(2), atol=1e-5)
    # nearest: the value of the pixel that contains the point
    binary = (maps[:, 0] > 0).float()
    inside = torch.tensor([[[0.01, 0.01], [0.99, 0.99], [3.5 / 7, 2.2 / 5]]]).expand(2, -1, -1)
    got = point_sample(binary, inside, mode="nearest")
    assert torch.equal(got, torch.stack([binary[:, 0, 0], binary[:, 4, 6], binary[:, 2, 3]], 1))


def test_uncertain_points_concentrate_where_logits_are_near_zero():
    # logit = 20 * (x - 0.5): uncertain points lie near the vertical line x = 0.5
    x = (torch.arange(32) + 0.5) / 32
    logits = (20 * (x - 0.5)).expand(3, 32, 32)
    torch.manual_seed(0)
    coords = uncertain_point_coords(logits, 200, oversample_ratio=3.0, importance_sample_ratio=1.0)
    assert coords.shape == (3, 200, 2) and coords.min() >= 0 and coords.max() <= 1
    uniform = uncertain_point_coords(logits, 200, importance_sample_ratio=0.0)
    assert (coords[..., 0] - 0.5).abs().mean() < 0.5 * (uniform[..., 0] - 0.5).abs().mean()
    mixed = uncertain_point_coords(logits, 200, oversample_ratio=3.0, importance_sample_ratio=0.75)
    close = (mixed[..., 0] - 0.5).abs() < 0.2
    assert close[:, :150].all()  # the first round(0.75 * 200) points are the uncertain ones


@pytest.mark.parametrize("bad", [dict(num_points=0), dict(num_points=4, oversample_ratio=0.5), dict(num_points=4, importance_sample_ratio=1.5)])
def test_uncertain_points_reject_bad_arguments_naming_the_key(bad):
    with pytest.raises(ValueError, match="MODEL.MASK_FORMER"):
        uncertain_point_coords(torch.zeros(1, 4, 4), **bad)


def test_uniform_point_losses_equal_full_resolution_losses_in_expectation():
    """Tolerance: 2% relative (the Monte Carlo standard error of 200 draws of 1024 points is ~0.3%)."""
    outputs, targets, indices = _smooth_example()
    full = SetCriterion(2, HungarianMatcher(), 0.1).loss_masks(outputs, targets, indices, 1.0)
    sampled = SetCriterion(2, HungarianMatcher(), 0.1, num_points=1024, importance_sample_ratio=0.0)
    torch.manual_seed(1)
    draws = [sampled.loss_masks(outputs, targets, indices, 1.0) for _ in range(200)]
    for k in ("loss_focal", "loss_dice"):
        mean = torch.stack([d[k] for d in draws]).mean()
        assert abs(mean - full[k]) < 0.02 * full[k], (k, float(mean), float(full[k]))
    # a single draw is noisy but unbiased, so not every draw equals the full loss
    assert torch.stack([d["loss_focal"] for d in draws]).std() > 0


def test_importance_sampled_losses_are_a_different_objective_with_gradients():
    outputs, targets, indices = _smooth_example()
    pred = outputs["pred_masks"].clone().requires_grad_(True)
    outputs["pred_masks"] = pred
    crit = SetCriterion(2, HungarianMatcher(), 0.1, num_points=256)  # default: 3x oversampling, 75% uncertain
    losses = crit.loss_masks(outputs, targets, indices, 1.0)
    (losses["loss_focal"] + losses["loss_dice"]).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_point_sampled_loss_uses_far_less_memory():
    """10 matched masks, 128x128 logits, 512x512 targets: autograd keeps 20 MiB for the full-resolution
    losses (the upsampled logits and the targets, 10 MiB each: the binary focal and dice losses keep no
    intermediates) and 2.5 MiB for 112*112 = 12544 points (the sampled logits and targets, the point
    coordinates and the 128x128 logits that grid_sample reads; measured on CPU; required: < 1/7)."""
    g = torch.Generator().manual_seed(0)
    m = 10
    pred = torch.randn(1, m, 128, 128, generator=g, requires_grad=True)
    outputs = {"pred_logits": torch.zeros(1, m, 3), "pred_masks": pred}
    targets = [{"labels": torch.zeros(m, dtype=torch.long), "masks": (torch.rand(m, 512, 512, generator=g) > 0.5).float()}]
    indices = [(torch.arange(m), torch.arange(m))]
    full_bytes, _ = _saved_bytes(lambda: SetCriterion(2, HungarianMatcher(), 0.1).loss_masks(outputs, targets, indices, 1.0))
    point_bytes, _ = _saved_bytes(lambda: SetCriterion(2, HungarianMatcher(), 0.1, num_points=12544).loss_masks(outputs, targets, indices, 1.0))
    assert full_bytes >= 20 * 2**20 - 1024
    assert point_bytes < full_bytes / 7


def test_point_matching_costs_equal_full_costs_in_expectation():
    """Point costs estimate the costs of the bilinearly upsampled logits against the full-resolution
    targets (the matcher's default evaluates them at h x w instead): the mean of 100 draws of 1024 points
    is within 2% (+0.02) of those."""
    g = torch.Generator().manual_seed(3)
    q, t, k = 5, 3, 4
    logits = torch.randn(1, q, k + 1, generator=g)
    masks = F.interpolate(3 * torch.randn(1, q, 4, 4, generator=g), size=(16, 16), mode="bilinear", align_corners=False)
    tgt = {"labels": torch.tensor([0, 2, 3]), "masks": (torch.rand(t, 64, 64, generator=g) > 0.5).float()}
    upsampled = F.interpolate(masks, size=(64, 64), mode="bilinear", align_corners=False)
    exact = HungarianMatcher().cost_matrices(logits, upsampled, [tgt])[0]
    sampled = HungarianMatcher(num_points=1024, point_sampling="always")  # 1024 > 16 x 16: "auto" would use every pixel
    torch.manual_seed(0)
    mean = torch.stack([sampled.cost_matrices(logits, masks, [tgt])[0] for _ in range(100)]).mean(0)
    assert torch.allclose(mean, exact, rtol=0.02, atol=0.02), (mean - exact).abs().max()
    assert not torch.allclose(sampled.cost_matrices(logits, masks, [tgt])[0], exact, atol=1e-3)


def test_point_matching_keeps_the_no_mask_rule_and_one_host_copy_for_all_layers():
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 0, 1] = 5.0
    logits[0, 1, 0] = 5.0
    pred_masks = torch.full((1, 3, 8, 8), -10.0)
    pred_masks[0, 1] = 10.0
    tgt = {"labels": torch.tensor([1, 0]), "masks": torch.stack([torch.zeros(8, 8), torch.ones(8, 8)]), "has_mask": torch.tensor([False, True])}
    matcher = HungarianMatcher(num_points=32)
    cost = matcher.cost_matrices(logits, pred_masks, [tgt])[0]
    assert torch.allclose(cost[:, 0], -logits[0].softmax(-1)[:, 1])  # class term only
    layer = {"pred_logits": logits, "pred_masks": pred_masks}
    per_layer = matcher.match_layers([layer, layer], [tgt])
    assert len(per_layer) == 2
    for rows, cols in (per_layer[0][0], per_layer[1][0]):
        assert dict(zip(cols.tolist(), rows.tolist())) == {0: 0, 1: 1}


def test_full_resolution_default_is_unchanged_by_the_option():
    outputs, targets, indices = _smooth_example()
    crit = SetCriterion(2, HungarianMatcher(), 0.1)
    assert crit.num_points == 0 and HungarianMatcher().num_points == 0
    a = crit.loss_masks(outputs, targets, indices, 1.0)
    b = crit.loss_masks(outputs, targets, indices, 1.0)
    assert torch.equal(a["loss_focal"], b["loss_focal"])  # deterministic: no sampling
    with pytest.raises(ValueError, match="TRAIN_NUM_POINTS"):
        SetCriterion(2, HungarianMatcher(), 0.1, num_points=-1)
    with pytest.raises(ValueError, match="TRAIN_NUM_POINTS"):
        HungarianMatcher(num_points=-1)


def test_config_keys_reach_matcher_and_criterion():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from simformer import add_simformer_config
    from simformer.utils.config_merge import merge_config
    from tests.engine.test_training import BASE_CONFIG, TINY

    cfg = get_cfg()
    add_simformer_config(cfg)
    assert cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS == 0  # default: full resolution
    merge_config(cfg, BASE_CONFIG, TINY + ["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO", "0.5"])
    criterion = build_model(cfg).criterion
    assert (criterion.num_points, criterion.matcher.num_points, criterion.importance_sample_ratio, criterion.oversample_ratio) == (64, 64, 0.5, 3.0)
