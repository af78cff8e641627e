import itertools

import torch

from simformer.modeling.losses import batch_dice_cost, batch_sigmoid_focal_cost
from simformer.modeling.matcher import HungarianMatcher


def _brute_force_min(cost):
    q, t = cost.shape
    best = None
    for perm in itertools.permutations(range(q), t):
        total = sum(cost[perm[j], j] for j in range(t))
        best = total if best is None or total < best else best
    return best


def _targets(g, t, k, size):
    labels = torch.randint(0, k, (t,), generator=g)
    masks = torch.rand(t, size, size, generator=g) > 0.5
    return {"labels": labels, "masks": masks.float()}


def test_matcher_equals_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(cost_class=1.0, cost_focal=20.0, cost_dice=1.0)
    for trial in range(12):
        q, t, k = 5, 1 + trial % 4, 6
        outputs = {"pred_logits": torch.randn(1, q, k + 1, generator=g), "pred_masks": torch.randn(1, q, 4, 4, generator=g)}
        tgt = _targets(g, t, k, 8)  # masks at 2x the prediction size: downsampled by nearest
        cost = matcher.cost_matrices(outputs["pred_logits"], outputs["pred_masks"], [tgt])[0]
        rows, cols = matcher(outputs, [tgt])[0]
        assert len(rows) == t and sorted(cols.tolist()) == list(range(t))
        achieved = cost[rows, cols].sum().item()
        assert abs(achieved - _brute_force_min(cost.numpy())) < 1e-5


def test_cost_matrix_terms():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, generator=g)
    masks = torch.randn(1, 3, 2, 2, generator=g)
    tgt = {"labels": torch.tensor([2, 0]), "masks": (torch.rand(2, 2, 2, generator=g) > 0.5).float()}
    cost = HungarianMatcher(2.0, 20.0, 1.0).cost_matrices(logits, masks, [tgt])[0]
    prob = logits[0].softmax(-1)
    flat_pred, flat_tgt = masks[0].flatten(1), tgt["masks"].flatten(1)
    expected = -2.0 * prob[:, [2, 0]] + 20.0 * batch_sigmoid_focal_cost(flat_pred, flat_tgt) + batch_dice_cost(flat_pred, flat_tgt)
    assert torch.allclose(cost, expected, atol=1e-5)


def test_targets_without_mask_are_matched_by_class_score_alone():
    # query 0 predicts class 1 confidently but its mask is terrible; a no-mask target of class 1 must go to it
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 0, 1] = 5.0
    logits[0, 1, 0] = 5.0
    pred_masks = torch.full((1, 3, 4, 4), -10.0)
    pred_masks[0, 1] = 10.0
    tgt = {
        "labels": torch.tensor([1, 0]),
        "masks": torch.stack([torch.zeros(4, 4), torch.ones(4, 4)]),
        "has_mask": torch.tensor([False, True]),
    }
    matcher = HungarianMatcher()
    cost = matcher.cost_matrices(logits, pred_masks, [tgt])[0]
    prob = logits[0].softmax(-1)
    assert torch.allclose(cost[:, 0], -prob[:, 1])  # class term only
    rows, cols = matcher({"pred_logits": logits, "pred_masks": pred_masks}, [tgt])[0]
    assignment = dict(zip(cols.tolist(), rows.tolist()))
    assert assignment == {0: 0, 1: 1}


def test_auto_point_sampling_uses_every_pixel_when_points_are_not_fewer():
    """MATCHER_POINT_SAMPLING "auto": P >= h*w gives exactly the every-pixel costs; P < h*w gives exactly
    the point costs of "always" (same random points); "always" with P >= h*w still samples (different)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 6, 5, generator=g)  # (N layers, B, Q, K+1)
    masks = torch.randn(2, 1, 6, 8, 8, generator=g)  # h*w = 64
    tgt = [_targets(g, 3, 4, 32)]
    exact = HungarianMatcher(num_points=0).layer_cost_matrices(logits, masks, tgt)[0]
    auto_many = HungarianMatcher(num_points=64).layer_cost_matrices(logits, masks, tgt)[0]
    assert torch.equal(auto_many, exact)
    torch.manual_seed(7)
    always_many = HungarianMatcher(num_points=64, point_sampling="always").layer_cost_matrices(logits, masks, tgt)[0]
    assert not torch.allclose(always_many, exact)
    torch.manual_seed(7)
    auto_few = HungarianMatcher(num_points=63).layer_cost_matrices(logits, masks, tgt)[0]
    torch.manual_seed(7)
    always_few = HungarianMatcher(num_points=63, point_sampling="always").layer_cost_matrices(logits, masks, tgt)[0]
    assert torch.equal(auto_few, always_few) and not torch.allclose(auto_few, exact)
    assert HungarianMatcher(num_points=64).uses_points((8, 8)) is False
    assert HungarianMatcher(num_points=64).uses_points((8, 9)) is True


def test_matcher_point_sampling_rejects_unknown_mode():
    import pytest

    with pytest.raises(ValueError, match="MODEL.MASK_FORMER.MATCHER_POINT_SAMPLING"):
        HungarianMatcher(num_points=10, point_sampling="sometimes")
