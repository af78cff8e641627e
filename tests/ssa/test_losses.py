"""SSA loss terms (ssa_adapter.losses) against hand-computed small cases; ignore pixels excluded."""
import math

import pytest
import torch

from ssa_adapter.losses import (
    cross_entropy,
    dice_loss,
    downsample_labels,
    label_boundaries,
    relation_distillation,
    response_distillation,
    spatial_distillation,
)

IGNORE = 255


def test_label_boundaries_band_border_and_ignore():
    labels = torch.tensor([[[0, 0, 0, 1, 1, 1]] * 4])  # vertical edge between columns 2 and 3
    edge = label_boundaries(labels, width=3)
    expected = torch.tensor([[False, False, True, True, False, False]] * 4)
    assert torch.equal(edge[0], expected)  # 2-px band, the image frame is not a boundary
    wide = label_boundaries(labels, width=5)[0, 0]
    assert wide.tolist() == [False, True, True, True, True, False]
    framed = label_boundaries(labels, width=3, border=1)[0]
    assert framed[0].sum() == 0 and framed[-1].sum() == 0 and framed[1].tolist() == expected[1].tolist()
    # the ignore value is a label of its own: class <-> ignore transitions are boundaries
    ignored = torch.tensor([[[0, 0, 0, IGNORE, IGNORE, IGNORE]]])
    assert label_boundaries(ignored, width=3)[0, 0].tolist() == [False, False, True, True, False, False]
    assert not label_boundaries(torch.zeros(1, 3, 3, dtype=torch.long)).any()
    with pytest.raises(ValueError, match="odd"):
        label_boundaries(labels, width=4)


def test_downsample_labels_takes_top_left_sample():
    labels = torch.arange(16).reshape(1, 4, 4)
    assert downsample_labels(labels, (2, 2)).tolist() == [[[0, 2], [8, 10]]]
    assert downsample_labels(labels, (4, 4)) is labels


def test_cross_entropy_averages_valid_pixels_only():
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 1] = math.log(3)  # pixel 1: p = (3/4, 1/4)
    labels = torch.tensor([[[0, 0, IGNORE]]])
    expected = (math.log(2) - math.log(0.75)) / 2
    assert cross_entropy(logits, labels, IGNORE).item() == pytest.approx(expected, abs=1e-6)
    assert cross_entropy(logits, torch.full_like(labels, IGNORE), IGNORE).item() == 0.0


def test_dice_excludes_ignore_pixels():
    labels = torch.tensor([[[0, 1, IGNORE]]])
    # sigmoid(0) = 1/2 everywhere: per present class inter 1/2, sum(p) = 1 over the two valid pixels, area 1
    # -> 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3 (counting the ignore pixel as a negative would give 1 - 2/3.5)
    assert dice_loss(torch.zeros(1, 3, 1, 3), labels, IGNORE).item() == pytest.approx(1 / 3, abs=1e-6)
    # class 2 is absent: not averaged in. Logits at the ignore pixel do not matter.
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, :, 0, 2] = 50.0
    assert dice_loss(logits, labels, IGNORE).item() == pytest.approx(1 / 3, abs=1e-6)


def test_dice_hand_computed_two_images():
    logits = torch.tensor([[[[100.0, -100.0]], [[-100.0, 100.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])  # B=2, K=2, 1x2
    labels = torch.tensor([[[0, 1]], [[0, 0]]])
    # image 0: perfect -> both classes d = 1 - (2 + 1) / (1 + 1 + 1) = 0; image 1: only class 0 present,
    # p = 1/2 on both pixels: d = 1 - (2 * 1 + 1) / (1 + 2 + 1) = 1/4. Mean over the 3 pairs = 1/12.
    assert dice_loss(logits, labels, IGNORE).item() == pytest.approx(1 / 12, abs=1e-6)
    assert dice_loss(logits, torch.full_like(labels, IGNORE), IGNORE).item() == 0.0


def _ell(student, label, smooth=0.5):
    """Hand formula of the per-pixel distillation loss with a uniform teacher over K = 2 classes."""
    logp = torch.log_softmax(torch.tensor(student), 0).tolist()
    return -smooth * (0.5 * logp[0] + 0.5 * logp[1]) - (1 - smooth) * logp[label]


def test_response_distillation_hand_computed():
    # 1 x 4 pixels, labels (0, 0, 1, ignore); pixel 0 is a boundary pixel, class 1 has no boundary pixel
    student = torch.tensor([[[[0.0, math.log(3), 0.0, 5.0]], [[0.0, 0.0, 0.0, -5.0]]]], requires_grad=True)
    teacher = torch.zeros(1, 2, 1, 4)  # uniform: every valid pixel has entropy ln 2, so the weights cancel
    labels = torch.tensor([[[0, 0, 1, IGNORE]]])
    boundary = torch.tensor([[[True, False, False, True]]])
    l0, l1, l2 = _ell([0.0, 0.0], 0), _ell([math.log(3), 0.0], 0), _ell([0.0, 0.0], 1)
    # class 0: (boundary mean + interior mean) / 2; class 1: interior only (not halved, spec §8.2.9)
    expected = ((l0 + l1) / 2 + l2) / 2
    loss = response_distillation(student, teacher, labels, boundary, IGNORE, smooth=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.all(student.grad[..., 3] == 0)  # the ignore pixel gets no gradient
    # smooth = 1: pure teacher target, l = -(log p0 + log p1) / 2
    soft = [_ell(s, y, smooth=1.0) for s, y in (([0.0, 0.0], 0), ([math.log(3), 0.0], 0), ([0.0, 0.0], 1))]
    full = response_distillation(student, teacher, labels, boundary, IGNORE, smooth=1.0)
    assert full.item() == pytest.approx(((soft[0] + soft[1]) / 2 + soft[2]) / 2, abs=1e-6)


def test_response_distillation_entropy_weights():
    # teacher certain on pixel 1 (entropy ~0) and uniform on pixel 0: class 0's interior mean is pixel 0's loss
    student = torch.tensor([[[[2.0, -1.0]], [[0.0, 1.0]]]])
    teacher = torch.tensor([[[[0.0, 60.0]], [[0.0, 0.0]]]])
    labels = torch.tensor([[[0, 0]]])
    boundary = torch.zeros(1, 1, 2, dtype=torch.bool)
    logp = torch.log_softmax(student[0, :, 0, 0], 0)
    expected = -(0.25 * logp[0] + 0.25 * logp[1]) - 0.5 * logp[0]
    loss = response_distillation(student, teacher, labels, boundary, IGNORE)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert response_distillation(student, teacher, torch.full_like(labels, IGNORE), boundary, IGNORE).item() == 0.0


def test_relation_distillation_hand_computed_and_one_sided():
    same = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])  # both prototypes point the same way: relations (1/2, 1/2)
    orthogonal = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # relations (sigmoid(15), sigmoid(-15))
    expected = 0.5 - 1 / (1 + math.exp(15))
    assert relation_distillation(same, orthogonal, tau=15.0).item() == pytest.approx(expected, abs=1e-6)
    # the student is less similar than the teacher everywhere: nothing to push apart
    assert relation_distillation(orthogonal, same, tau=15.0).item() == pytest.approx(0.0, abs=1e-12)


def test_spatial_distillation_hand_computed():
    teacher = torch.tensor([[[math.log(3), 0.0]]])  # softmax (3/4, 1/4)
    student = torch.tensor([[[0.0, math.log(3)]]], requires_grad=True)  # log softmax (ln 1/4, ln 3/4)
    expected = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    loss = spatial_distillation(student, teacher)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert spatial_distillation(torch.zeros(2, 3, 2), torch.randn(2, 3, 2)).item() == pytest.approx(math.log(2), abs=1e-6)
