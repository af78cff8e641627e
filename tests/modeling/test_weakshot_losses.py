"""SimFormer's weak-shot loss terms against hand-computed values (spec §4.3-§4.6)."""
import math

import pytest
import torch

from simformer.modeling.losses.weakshot import (
    balanced_pair_loss,
    complementary_loss,
    complementary_region_logits,
    distillation_loss,
    gather_points,
    pair_similarity_targets,
    parse_distill_func,
    partner_index,
    sample_points,
    student_scores,
    student_similarity,
)
from simformer.modeling.simnet import RunningPairBalance, SimNet

FLOOR = -2.9444


def _focal(x, y, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    pt = p if y else 1 - p
    a = alpha if y else 1 - alpha
    return a * (1 - pt) ** gamma * -math.log(pt)


def test_complementary_loss_equals_hand_computed_4x4():
    # two novel queries on a 4x4 image: left half / top-right logits; base region = bottom-right 2x2,
    # padding = last column
    q1 = torch.full((4, 4), -6.0)
    q1[:, :2] = 2.0
    q2 = torch.full((4, 4), -6.0)
    q2[:2, 2:] = 0.5
    base = torch.zeros(4, 4)
    base[2:, 2:] = 1
    pad = torch.zeros(4, 4)
    pad[:, 3] = 1
    target = (1 - base) * (1 - pad)
    region = complementary_region_logits(torch.stack([q1, q2]).flatten(1)[None], FLOOR)
    loss = complementary_loss(region, target.flatten()[None], 20.0, 1.0)
    # by hand: r = 2 on the left half, 0.5 top-right, the floor on the bottom-right
    r = [[2.0, 2.0, 0.5, 0.5]] * 2 + [[2.0, 2.0, FLOOR, FLOOR]] * 2
    g = target.tolist()
    focal = sum(_focal(r[i][j], g[i][j]) for i in range(4) for j in range(4)) / 16
    p = [[1 / (1 + math.exp(-r[i][j])) for j in range(4)] for i in range(4)]
    inter = sum(p[i][j] * g[i][j] for i in range(4) for j in range(4))
    dice = 1 - (2 * inter + 1) / (sum(map(sum, p)) + sum(map(sum, g)) + 1)
    expected = (20 * focal + dice) / (1 + 1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_complementary_loss_no_gradient_below_floor():
    logits = torch.full((1, 2, 16), -5.0, requires_grad=True)  # every novel logit below the floor
    with torch.no_grad():
        logits[0, 0, :4] = 1.0  # except four pixels of query 0
    target = torch.ones(1, 16)
    complementary_loss(complementary_region_logits(logits, FLOOR), target).backward()
    grad = logits.grad[0]
    assert (grad[0, :4] != 0).all()
    assert (grad[0, 4:] == 0).all() and (grad[1] == 0).all()


def test_complementary_loss_no_images_is_zero():
    assert complementary_loss(torch.zeros(0, 9), torch.zeros(0, 9)).item() == 0.0


def test_partner_index_and_odd_batch():
    assert partner_index(6).tolist() == [1, 0, 3, 2, 5, 4]
    with pytest.raises(ValueError, match="pairs"):
        partner_index(3)


def test_sample_points_inside_region_then_topped_up():
    region = torch.zeros(2, 20, dtype=torch.bool)
    region[0, 3:13] = True  # 10 pixels
    region[1, :3] = True  # only 3 pixels
    idx = sample_points(region, 5, torch.Generator().manual_seed(0))
    assert idx.shape == (2, 5)
    assert region[0, idx[0]].all()
    idx = sample_points(region, 6, torch.Generator().manual_seed(0))
    assert sorted(idx[1][region[1, idx[1]]].tolist()) == [0, 1, 2]  # all 3 inside, 3 from outside
    assert len(set(idx[1].tolist())) == 6


def test_gather_points_equals_grid_sample_at_pixel_centres():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 5, 7, generator=g)
    idx = torch.randint(0, 35, (2, 4), generator=g)
    got = gather_points(feats.flatten(2), idx)  # (2, 4, 3)
    ys, xs = (idx // 7).float(), (idx % 7).float()
    grid = torch.stack([xs / 6 * 2 - 1, ys / 4 * 2 - 1], -1)[:, :, None, :]  # (B, K, 1, 2)
    ref = torch.nn.functional.grid_sample(feats, grid, mode="bilinear", align_corners=True)[..., 0].transpose(1, 2)
    assert torch.allclose(got, ref, atol=1e-5)


def test_pair_targets_validity_and_balance_weights():
    # image 0 points: base 1, base 2, novel 7, ignore 255; image 1 points: base 2, novel 7, ignore, base 1
    labels = torch.tensor([[1, 2, 7, 255], [2, 7, 255, 1]])
    is_base = torch.tensor([[True, True, False, False], [True, False, False, True]])
    target, valid = pair_similarity_targets(labels, is_base, partner_index(2))
    assert target[0].tolist() == [[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    # valid = at least one endpoint in the base region: novel-novel and ignore-ignore pairs are not
    assert valid[0].tolist() == [[True] * 4, [True] * 4, [True, False, False, True], [True, False, False, True]]
    balance = RunningPairBalance(window=3, stride=1)
    assert balance.weights() == (0.5, 0.5)  # seeded with one positive and one negative
    w_pos, w_neg = balance.update(target)  # 8 positives, 24 negatives (+ the seed 1 / 1)
    assert (w_pos, w_neg) == pytest.approx((25 / 34, 9 / 34))
    balance.update(torch.ones(1, 2, 2))
    balance.update(torch.ones(1, 2, 2))  # window of 3: the seed is gone, the first update stays
    assert balance.weights() == pytest.approx((24 / 40, 16 / 40))
    balance.update(torch.ones(1, 2, 2))  # now only all-positive updates remain
    assert balance.weights() == pytest.approx((0.0, 1.0))
    logits = torch.randn(2, 4, 4)
    loss = balanced_pair_loss(logits, target, valid, 0.75, 0.25)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    w = torch.where(target > 0, 0.75, 0.25) * valid
    assert loss.item() == pytest.approx(float((w * bce).sum() / valid.sum()), rel=1e-6)


def test_balance_stride_counts_every_fifth_row_and_column():
    balance = RunningPairBalance(window=25, stride=5)
    target = torch.zeros(1, 10, 10)
    target[0, 0, 0] = 1  # counted (row 0, col 0)
    target[0, 1, 1] = 1  # not counted
    balance.update(target)
    assert balance.history[1].tolist() == [1.0, 3.0]


def test_simnet_factorised_equals_concatenated():
    torch.manual_seed(0)
    net = SimNet(8, hidden_dim=16, num_blocks=3)
    fa, fb = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert torch.allclose(net(fa, fb), net.forward_concat(fa, fb), atol=1e-5)
    net.eval()
    assert torch.allclose(net(fa, fb), net.forward_concat(fa, fb), atol=1e-5)


def test_student_scores_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 3, 5, generator=g)  # 3 queries, K = 4 classes + no-object
    m = torch.randn(1, 3, 2, generator=g)  # mask logits at 2 points
    novel = torch.tensor([1, 3])
    p, s = z.softmax(-1), m.sigmoid()
    expect = {
        "NovelScore": torch.einsum("bqc,bqk->bkc", p[..., [1, 3]], s),
        "FullScore": torch.einsum("bqc,bqk->bkc", p[..., :4], s),
        "FullLogit": torch.einsum("bqc,bqk->bkc", z[..., :4], s),
        "FullLogitC": torch.einsum("bqc,bqk->bkc", z[..., :4].relu(), s),
    }
    for mode, ref in expect.items():
        assert torch.allclose(student_scores(z, m, novel, mode), ref, atol=1e-6), mode
    # point 0 by hand for NovelScore, class 3
    assert student_scores(z, m, novel)[0, 0, 1].item() == pytest.approx(sum(float(p[0, q, 3] * s[0, q, 0]) for q in range(3)), rel=1e-6)


def test_cross_image_student_pairs_points_of_different_images():
    scores = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]])  # (B=2, K=2, C=2)
    cross = student_similarity(scores, partner_index(2), cross_image=True)
    same = student_similarity(scores, partner_index(2), cross_image=False)
    r = 1 / math.sqrt(2)
    assert torch.allclose(cross[0], torch.tensor([[1.0, r], [0.0, r]]), atol=1e-6)  # image-0 points vs image-1 points
    assert torch.allclose(same[0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), atol=1e-6)  # image-0 points vs image-0
    assert torch.allclose(cross[1], cross[0].T, atol=1e-6)


def test_distillation_functions_equal_their_formulas():
    t = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0])
    s = torch.tensor([0.2, 0.6, 0.1, 0.995, 0.5])
    tc, sc = t.clamp(0.01, 0.99), s.clamp(0.01, 0.99)
    ce = -(tc * sc.log() + (1 - tc) * (1 - sc).log())
    cce = -(t - 0.5).relu() * torch.log(1 + s) - (0.5 - t).relu() * torch.log(2 - s)
    assert torch.allclose(parse_distill_func("ce")(t, s), ce)
    assert torch.allclose(parse_distill_func("cce")(t, s), cce)
    assert torch.allclose(parse_distill_func("b0.3")(t, s), -(t - 0.3) * s)
    for bad in ("bx", "mse", "b"):
        with pytest.raises(ValueError, match="DISTILL_FUNC"):
            parse_distill_func(bad)


def test_distillation_loss_only_pairs_sharing_a_novel_class():
    teacher, student = torch.rand(2, 3, 3), torch.rand(2, 3, 3, requires_grad=True)
    zero = distillation_loss(teacher, student, torch.tensor([False, False]), "ce")
    assert zero.item() == 0.0
    one = distillation_loss(teacher, student, torch.tensor([True, False]), "cce")
    assert one.detach().item() == pytest.approx(float(parse_distill_func("cce")(teacher[0], student[0].detach()).mean()), rel=1e-6)


def test_criterion_complementary_loss_matches_a_per_image_reference():
    """ComplementaryLoss (host bookkeeping, cached regions) equals the loss built image by image: image 0
    has two novel-matched queries, image 1 none, image 2 one; padding is excluded."""
    from simformer.modeling.loss_terms import ComplementaryLoss

    torch.manual_seed(0)
    crit = ComplementaryLoss()
    h = w = 8
    pred = torch.randn(3, 5, 4, 4) * 3
    masks = torch.zeros(3, 3, h, w)
    masks[:, 0, :4] = 1.0  # a base mask in the top half of every image
    has_mask = torch.tensor([[True, False, False], [True, True, True], [True, False, True]])
    targets = []
    for b in range(3):
        pad = torch.zeros(h, w, dtype=torch.bool)
        pad[:, -2:] = b == 2
        targets.append({"labels": torch.tensor([0, 3, 3]), "masks": masks[b], "has_mask": has_mask[b], "pad": pad})
    indices = [(torch.tensor([4, 1, 2]), torch.tensor([0, 1, 2])), (torch.tensor([0]), torch.tensor([1])), (torch.tensor([3, 0]), torch.tensor([1, 0]))]
    got = crit({"pred_masks": pred}, targets, indices)["loss_comp"]
    up = torch.nn.functional.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False)
    regions, goals = [], []
    for b, queries in ((0, [1, 2]), (2, [3])):
        regions.append(complementary_region_logits(up[b, queries].flatten(1)[None], FLOOR)[0])
        goals.append(((1 - masks[b, 0]) * (~targets[b]["pad"]).float()).flatten())
    want = complementary_loss(torch.stack(regions), torch.stack(goals))
    assert torch.allclose(got, want, rtol=1e-5), (got, want)
    # a second layer reuses the cached not-base regions and gives the same value for the same logits
    assert torch.allclose(crit({"pred_masks": pred}, targets, indices)["loss_comp"], want, rtol=1e-5)
