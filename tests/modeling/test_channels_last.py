"""MODEL.MASK_FORMER.CHANNELS_LAST: the same model in NHWC memory format (losses, gradients, inference and
checkpoints equal to the NCHW model within float tolerance), and the layout-only rewrites that came with it
(multi-channel point reads, per-layer matcher inputs, unbound decoder outputs)."""
import os

import pytest
import torch
from detectron2.modeling import build_model

from simformer.modeling.losses.point_sampling import point_sample
from simformer.modeling.matcher import HungarianMatcher
from tests import block_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASKFORMER = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
MASKFORMER_SSA = os.path.join(REPO, "configs", "synthetic", "ssa", "maskformer_R18_ssa.yaml")
K, DIM, SIZE = 5, 32, 64
TINY = block_images.maskformer_tiny(K, DIM) + [
    "MODEL.MASK_FORMER.DROPOUT", "0.0",  # no random masks: the two layouts see identical computations
    # frozen BatchNorm: batch statistics over the 2x2 res5 maps of a 64-px batch amplify float32 rounding
    # (different summation orders of the two layouts) to ~1e-2 in the backbone gradients
    "MODEL.RESNETS.NORM", "FrozenBN",
]  # fmt: skip


def _pair(path, *opts):
    """(NCHW model, NHWC model) with the same weights, both in train mode."""
    torch.manual_seed(0)
    ref = build_model(block_images.config(path, TINY, *opts))
    nhwc = build_model(block_images.config(path, TINY, "MODEL.MASK_FORMER.CHANNELS_LAST", "True", *opts))
    nhwc.load_state_dict(ref.state_dict())
    return ref.train(), nhwc.train()


def _batch(seed=0):
    return block_images.block_batch(seed, 2, SIZE, K, colour=(50, 40), instances=True)


def _losses_and_grads(model, batch):
    model.zero_grad()
    losses = model(batch)
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("path,opts", [(MASKFORMER, ()), (MASKFORMER, ("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64")), (MASKFORMER_SSA, ())], ids=["full", "points", "ssa"])
def test_channels_last_model_equals_the_nchw_model(path, opts):
    ref, nhwc = _pair(path, *opts)
    four_d = [p for p in nhwc.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in ref.parameters() if p.dim() == 4)
    batch = _batch()
    torch.manual_seed(1)  # point sampling draws random points: same draws on both sides
    losses_ref, grads_ref = _losses_and_grads(ref, batch)
    torch.manual_seed(1)
    losses_cl, grads_cl = _losses_and_grads(nhwc, batch)
    assert losses_ref.keys() == losses_cl.keys()
    for k in losses_ref:
        assert torch.allclose(losses_ref[k], losses_cl[k], rtol=1e-4, atol=1e-5), k
    assert grads_ref.keys() == grads_cl.keys()
    for n in grads_ref:
        assert (grads_ref[n] - grads_cl[n]).norm() <= 1e-4 * grads_ref[n].norm() + 1e-9, n
    ref.eval(), nhwc.eval()
    with torch.no_grad():
        out_ref, out_cl = ref(batch), nhwc(batch)
    for a, b in zip(out_ref, out_cl):
        assert torch.allclose(a["sem_seg"], b["sem_seg"], atol=1e-5)


def test_checkpoints_load_across_layouts():
    """A state dict saved by either layout loads into the other: values, not strides, are stored."""
    ref, nhwc = _pair(MASKFORMER)
    torch.manual_seed(3)
    for p in ref.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    nhwc.load_state_dict(ref.state_dict())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in nhwc.parameters() if p.dim() == 4)
    back = build_model(block_images.config(MASKFORMER, TINY))
    back.load_state_dict(nhwc.state_dict())
    for (n, a), (_, b) in zip(ref.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    nhwc.eval(), ref.eval()
    batch = _batch(1)
    with torch.no_grad():
        assert torch.allclose(ref(batch)[0]["sem_seg"], nhwc(batch)[0]["sem_seg"], atol=1e-5)


def test_padded_scores_with_channels_last_equal_nchw():
    ref, nhwc = _pair(MASKFORMER)
    ref.eval(), nhwc.eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(ref.padded_scores(images), nhwc.padded_scores(images), atol=1e-5)


def test_multichannel_point_sample_equals_one_channel_at_a_time():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 9, 11, generator=g)
    coords = torch.rand(3, 17, 2, generator=g)  # different points per image
    got = point_sample(maps, coords)
    assert got.shape == (3, 5, 17)
    for n in range(3):
        for c in range(5):
            assert torch.equal(got[n, c], point_sample(maps[n : n + 1, c : c + 1], coords[n : n + 1])[0, 0])
    # non-contiguous (channels-last) maps read the same values
    assert torch.equal(point_sample(maps.contiguous(memory_format=torch.channels_last), coords), got)
    # gradients flow to every channel
    maps.requires_grad_(True)
    point_sample(maps, coords).sum().backward()
    assert (maps.grad.flatten(2).sum(-1) > 0).all()


@pytest.mark.parametrize("num_points", [0, 50])
def test_matcher_takes_a_list_of_layers_or_a_stack(num_points):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 6, K + 1, generator=g)
    masks = torch.randn(3, 2, 6, 8, 8, generator=g)
    targets = [{"labels": torch.tensor([0, 2]), "masks": (torch.rand(2, 32, 32, generator=g) > 0.5).float()} for _ in range(2)]
    matcher = HungarianMatcher(num_points=num_points)
    torch.manual_seed(5)
    stacked = matcher.layer_cost_matrices(logits, masks, targets)
    torch.manual_seed(5)
    listed = matcher.layer_cost_matrices(logits, list(masks.unbind(0)), targets)
    for a, b in zip(stacked, listed):
        assert a.shape == (3, 6, 2) and torch.equal(a, b)
