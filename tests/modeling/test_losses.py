import math

import pytest
import torch

from simformer.modeling.losses import batch_dice_cost, batch_sigmoid_focal_cost, dice_loss, sigmoid_focal_loss, weighted_cross_entropy


def _focal_by_hand(x, y, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    return a_t * (1 - p_t) ** gamma * ce


def test_sigmoid_focal_loss_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    expected = sum(_focal_by_hand(x, y) for x, y in zip(logits[0].tolist(), targets[0].tolist())) / 4
    # x = 0, y = 1: 0.25 * 0.5^2 * ln 2 -- check one term by hand as well
    assert abs(_focal_by_hand(0.0, 1.0) - 0.25 * 0.25 * math.log(2)) < 1e-12
    assert torch.allclose(sigmoid_focal_loss(logits, targets), torch.tensor([expected]), atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 3.0)])
def test_binary_focal_loss_equals_the_general_form_with_its_gradient(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    x = (4 * torch.randn(3, 50, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = (torch.rand(3, 50, generator=g) > 0.6).double()
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # a non-uniform upstream gradient
    want = sigmoid_focal_loss(x, y, alpha, gamma)
    (grad_want,) = torch.autograd.grad((want * weights).sum(), x)
    got = sigmoid_focal_loss(x, y, alpha, gamma, binary_targets=True)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), x)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(grad_got, grad_want, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: sigmoid_focal_loss(t, y[:, :7], alpha, gamma, binary_targets=True), (x[:, :7].detach().requires_grad_(True),))
    # the hand-computed example above, through the binary path
    logits, targets = torch.tensor([[0.0, 2.0, -1.0, 3.0]]), torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    expected = sum(_focal_by_hand(a, b) for a, b in zip(logits[0].tolist(), targets[0].tolist())) / 4
    assert torch.allclose(sigmoid_focal_loss(logits, targets, binary_targets=True), torch.tensor([expected]), atol=1e-6)


def test_binary_focal_loss_keeps_only_its_inputs_for_backward():
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(4, 1000, requires_grad=True)
    y = (torch.rand(4, 1000) > 0.5).float()
    logits = x * 1.0  # a non-leaf, as in the criterion
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sigmoid_focal_loss(logits, y, binary_targets=True)
    fused = sum(storages.values())
    storages.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sigmoid_focal_loss(logits, y)
    general = sum(storages.values())
    assert fused == 2 * 4 * 1000 * 4  # logits and targets only
    assert general >= 3 * fused


def test_dice_loss_matches_hand_computation():
    logits = torch.tensor([[0.0, 0.0, 100.0, -100.0]])  # probabilities 0.5, 0.5, 1, 0
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # numerator 2 * (0.5 + 1) = 3; denominator (0.5 + 0.5 + 1) + 2 = 4; loss = 1 - (3 + 1) / (4 + 1)
    assert torch.allclose(dice_loss(logits, targets), torch.tensor([1 - 4 / 5]), atol=1e-6)
    # a perfect, confident prediction has (almost) zero dice loss
    assert dice_loss(torch.tensor([[50.0, -50.0]]), torch.tensor([[1.0, 0.0]])).item() < 1e-6


def test_dice_loss_gradient_and_saved_tensors():
    """The hand-written backward (targets without gradient) equals autograd through the formula, and the
    forward keeps the logits and targets plus two (N,) sums instead of the (N, P) probabilities."""
    torch.manual_seed(0)
    x = torch.randn(5, 300, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(5, 300) > 0.6).double()
    assert torch.autograd.gradcheck(lambda a: dice_loss(a, y), (x,))
    ref_x = x.detach().clone().requires_grad_(True)
    p = ref_x.sigmoid()
    ref = 1 - (2 * (p * y).sum(1) + 1) / (p.sum(1) + y.sum(1) + 1)
    w = torch.randn(5, dtype=torch.float64)
    (dice_loss(x, y) * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(dice_loss(x, y), ref) and torch.allclose(x.grad, ref_x.grad, atol=1e-15)
    # soft targets that need a gradient take the autograd form and get one
    soft = torch.rand(5, 300, dtype=torch.float64, requires_grad=True)
    dice_loss(x, soft).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0

    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        dice_loss(x.float() * 1.0, y.float())
    assert sorted(saved) == [5, 5, 1500, 1500]


def test_pairwise_costs_equal_per_pair_losses():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 30, generator=g)
    tgt = (torch.rand(3, 30, generator=g) > 0.5).float()
    focal = batch_sigmoid_focal_cost(pred, tgt)
    dice = batch_dice_cost(pred, tgt)
    assert focal.shape == dice.shape == (5, 3)
    for q in range(5):
        for t in range(3):
            assert torch.allclose(focal[q, t], sigmoid_focal_loss(pred[q : q + 1], tgt[t : t + 1])[0], atol=1e-6)
            assert torch.allclose(dice[q, t], dice_loss(pred[q : q + 1], tgt[t : t + 1])[0], atol=1e-6)


def test_weighted_cross_entropy_downweights_no_object():
    logits = torch.zeros(1, 2, 3)  # 2 queries, K = 2 real classes + no-object, uniform predictions
    target = torch.tensor([[0, 2]])  # query 0 -> class 0, query 1 -> no object
    weight = torch.tensor([1.0, 1.0, 0.1])
    # every CE term is ln 3; the weighted mean of equal terms is ln 3 whatever the weights
    assert torch.allclose(weighted_cross_entropy(logits, target, weight), torch.tensor(math.log(3)), atol=1e-6)
    logits2 = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    ce0 = -torch.log_softmax(logits2[0, 0], -1)[0]
    ce1 = -torch.log_softmax(logits2[0, 1], -1)[2]
    expected = (1.0 * ce0 + 0.1 * ce1) / 1.1
    assert torch.allclose(weighted_cross_entropy(logits2, target, weight), expected, atol=1e-6)


@pytest.mark.parametrize("focal_weight, dice_weight, alpha, gamma", [(20.0, 1.0, 0.25, 2.0), (1.0, 0.0, -1.0, 2.0), (0.0, 5.0, 0.25, 2.0), (3.0, 2.0, 0.5, 1.5)])
def test_fused_focal_dice_cost_equals_the_two_costs(focal_weight, dice_weight, alpha, gamma):
    """The matcher's fused mask cost = weighted sum of the reference pairwise costs, for ordinary and
    saturated logits (|x| up to 40, where softplus switches to its linear branch)."""
    from simformer.modeling.losses import batch_focal_dice_cost

    g = torch.Generator().manual_seed(4)
    logits = torch.cat([torch.randn(6, 300, generator=g) * 3, torch.randn(3, 300, generator=g) * 40])
    targets = (torch.rand(5, 300, generator=g) > 0.6).float()
    want = focal_weight * batch_sigmoid_focal_cost(logits, targets, alpha, gamma) + dice_weight * batch_dice_cost(logits, targets)
    before = logits.clone()
    got = batch_focal_dice_cost(logits, targets, focal_weight, dice_weight, alpha, gamma)
    assert got.shape == (9, 5) and torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    assert torch.equal(logits, before)  # the in-place steps work on temporaries only
