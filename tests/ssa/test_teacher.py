"""SSATeacher: GT class centres (batch-level semantic, per-image spatial), fallback for absent classes."""
import pytest
import torch

from ssa_adapter.teacher import SSATeacher, class_means, inverse_norm

IGNORE = 255


def test_class_means_hand_computed():
    feats = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]], [[[10.0, 20.0], [30.0, 40.0]]]])  # B=2, C=1, 2x2
    labels = torch.tensor([[[0, 0], [1, IGNORE]], [[1, 1], [IGNORE, 0]]])
    batch, present = class_means(feats, labels, num_classes=3, ignore_value=IGNORE, per_image=False)
    assert batch[:, 0].tolist() == pytest.approx([(1 + 3 + 40) / 3, (5 + 10 + 20) / 3, 0.0])
    assert present.tolist() == [True, True, False]
    image, present = class_means(feats, labels, num_classes=3, ignore_value=IGNORE, per_image=True)
    assert torch.allclose(image[..., 0], torch.tensor([[2.0, 5.0, 0.0], [40.0, 15.0, 0.0]]))
    assert present.tolist() == [[True, True, False], [True, True, False]]


def test_teacher_fallback_for_absent_classes():
    torch.manual_seed(0)
    b, c, k, h, w = 2, 4, 3, 2, 2
    teacher = SSATeacher(c, k, hidden_dim=2)
    feats = torch.randn(b, c, h, w)
    pos = torch.randn(b, c, h, w)
    pixels = feats + pos
    protos = torch.randn(b, k, c, requires_grad=True)
    basis = torch.randn(k, c, requires_grad=True)
    # image 0 holds classes 0 and 1, image 1 only class 0; class 2 is absent from the batch
    labels = torch.tensor([[[0, 0], [1, IGNORE]], [[0, 0], [0, IGNORE]]])
    logits, semantic, spatial = teacher(feats, pos, pixels, inverse_norm(pixels), protos, basis, labels)
    assert logits.shape == (b, k, h, w) and logits.abs().max() <= 15.0 + 1e-4

    sem_mean, _ = class_means(feats, labels, k, IGNORE, per_image=False)
    pos_mean, _ = class_means(pos, labels, k, IGNORE, per_image=True)
    fuse_s, fuse_p = teacher.semantic_fuse, teacher.spatial_fuse
    for i in range(b):
        # semantic centres are batch-level: class 1 (only in image 0) uses the batch mean in image 1 too
        for cls in (0, 1):
            assert torch.allclose(semantic[i, cls], fuse_s(torch.cat([sem_mean[cls], protos[i, cls]])), atol=1e-6)
        # absent from the batch: the fixed prototype itself stands in for the centre
        assert torch.allclose(semantic[i, 2], fuse_s(torch.cat([protos[i, 2], protos[i, 2]])), atol=1e-6)
    # spatial centres are per image: class 1 is absent from image 1 -> the position basis row
    assert torch.allclose(spatial[0, 1], fuse_p(torch.cat([pos_mean[0, 1], basis[1]])), atol=1e-6)
    assert torch.allclose(spatial[1, 1], fuse_p(torch.cat([basis[1], basis[1]])), atol=1e-6)

    # the fallback rows are detached: W and P get gradient only through the second half of the concat
    grad_p, grad_b = torch.autograd.grad(semantic[1, 2].sum() + spatial[1, 1].sum(), [protos, basis])
    w1_s = fuse_s[0].weight[:, c:]  # weights applied to the (non-detached) second input
    h = fuse_s[0](torch.cat([protos[1, 2], protos[1, 2]]))
    expected = w1_s.t() @ ((h > 0).float() * (fuse_s[2].weight.sum(0)))
    assert torch.allclose(grad_p[1, 2], expected, atol=1e-5)
    h = fuse_p[0](torch.cat([basis[1], basis[1]]))
    expected = fuse_p[0].weight[:, c:].t() @ ((h > 0).float() * fuse_p[2].weight.sum(0))
    assert torch.allclose(grad_b[1], expected, atol=1e-5)


def test_ignore_pixels_do_not_move_teacher_centres():
    torch.manual_seed(0)
    feats = torch.randn(1, 3, 2, 3)
    labels = torch.tensor([[[0, 1, IGNORE], [0, 1, IGNORE]]])
    changed = feats.clone()
    changed[..., 2] += 100.0
    for per_image in (False, True):
        a, _ = class_means(feats, labels, 2, IGNORE, per_image)
        b, _ = class_means(changed, labels, 2, IGNORE, per_image)
        assert torch.equal(a, b)
