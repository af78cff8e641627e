import torch
import pytest

from simformer.inference import postprocess_sem_seg, semantic_inference


def test_semantic_inference_hand_made():
    # 2 queries, K = 2 classes (+ no-object), 1x2 image
    mask_cls = torch.log(torch.tensor([[0.7, 0.1, 0.2], [0.1, 0.8, 0.1]]))  # softmax gives these probabilities
    mask_pred = torch.logit(torch.tensor([[[0.9, 0.2]], [[0.1, 0.6]]]))
    scores = semantic_inference(mask_cls, mask_pred)
    expected = torch.tensor(
        [
            [[0.7 * 0.9 + 0.1 * 0.1, 0.7 * 0.2 + 0.1 * 0.6]],
            [[0.1 * 0.9 + 0.8 * 0.1, 0.1 * 0.2 + 0.8 * 0.6]],
        ]
    )
    assert scores.shape == (2, 1, 2)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert scores.argmax(0).tolist() == [[0, 1]]
    batched = semantic_inference(mask_cls[None].repeat(3, 1, 1), mask_pred[None].repeat(3, 1, 1, 1))
    assert batched.shape == (3, 2, 1, 2) and torch.allclose(batched[2], expected, atol=1e-6)


def test_no_object_column_is_dropped():
    mask_cls = torch.tensor([[0.0, 0.0, 10.0]])  # almost surely "no object"
    scores = semantic_inference(mask_cls, torch.zeros(1, 2, 2))
    assert scores.shape == (2, 2, 2) and scores.max() < 1e-3


def test_postprocess_crops_padding_then_resizes():
    result = torch.zeros(1, 8, 8)
    result[0, :4, :6] = 1.0  # valid region is 4x6, the rest is padding
    out = postprocess_sem_seg(result, (4, 6), 8, 12)
    assert out.shape == (1, 8, 12) and torch.allclose(out, torch.ones(1, 8, 12))


def test_semantic_inference_in_place_equals_copy():
    torch.manual_seed(0)
    cls, masks = torch.randn(2, 5, 4), torch.randn(2, 5, 6, 7)
    want = semantic_inference(cls, masks)
    work = masks.clone()
    got = semantic_inference(cls, work, inplace=True)
    assert torch.allclose(got, want) and torch.allclose(work, masks.sigmoid())  # the input became probabilities
    half = masks.half()
    semantic_inference(cls, half, inplace=True)
    assert torch.equal(half, masks.half())  # not float32: never modified


@pytest.mark.parametrize("size, band", [((20, 36), 1 << 22), ((20, 36), 7 * 36), ((3, 4), 1), ((5, 9), 10)])
def test_upsampled_semantic_inference_equals_upsample_then_sum(size, band):
    """Banded resampling + one matrix product per band = upsampling every mask first (up to float
    rounding), for upsampling, the identity size and downsampling, with bands of one or several rows."""
    from torch.nn import functional as F

    from simformer.inference import semantic_inference, upsampled_semantic_inference

    g = torch.Generator().manual_seed(0)
    cls, masks = torch.randn(2, 7, 6, generator=g), torch.randn(2, 7, 5, 9, generator=g) * 3
    want = semantic_inference(cls, F.interpolate(masks, size=size, mode="bilinear", align_corners=False))
    got = upsampled_semantic_inference(cls, masks, size, band_elements=band)
    assert got.shape == (2, 5, *size) and torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_upsampled_semantic_inference_with_gradients_equals_without():
    """Inputs that need gradients take the assignment path (``out=`` does not support autograd): the same
    scores, and gradients flow to the class and mask logits."""
    from simformer.inference import upsampled_semantic_inference

    g = torch.Generator().manual_seed(1)
    cls, masks = torch.randn(1, 4, 5, generator=g), torch.randn(1, 4, 3, 5, generator=g)
    with torch.no_grad():
        plain = upsampled_semantic_inference(cls, masks, (7, 11), band_elements=4 * 11 * 2)
    cls.requires_grad_(True)
    masks.requires_grad_(True)
    scored = upsampled_semantic_inference(cls, masks, (7, 11), band_elements=4 * 11 * 2)
    assert torch.equal(scored.detach(), plain)
    scored.sum().backward()
    assert cls.grad.abs().sum() > 0 and masks.grad.abs().sum() > 0
