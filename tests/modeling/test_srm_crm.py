"""SRM (learned offset warp in the FPN top-down merges) and CRM (context on res5): hand-computed maths,
behaviour at initialisation, checkpoint compatibility, and a few training steps inside SimFormer."""
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from simformer import add_simformer_config
from simformer.data.dataset_mappers import build_mapper
from simformer.data.datasets.weakshot import register_simulated_weakshot
from simformer.engine import build_optimizer
from simformer.modeling.pixel_decoder import BasePixelDecoder, TransformerEncoderPixelDecoder
from simformer.modeling.pixel_decoder.crm import ContextualRefinementModule, channel_attention, spatial_attention
from simformer.modeling.pixel_decoder.srm import SemanticRefinementModule, flow_warp, neighbor_average, pixel_grid
from tests.data.test_weakshot_training import BASE_CONFIG, CLASSES, NOVEL, TINY, _write_dataset

SHAPES = {f"res{i}": ShapeSpec(channels=4 * 2**i, stride=2**i) for i in range(2, 6)}  # 16, 32, 64, 128 channels


def _features(batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, s.channels, size // s.stride, size // s.stride, generator=g) for k, s in SHAPES.items()}


def _constant(values, height, width):
    """(1, len(values), H, W) field with channel c equal to values[c] everywhere."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).expand(1, len(values), height, width).contiguous()


# ---------------------------------------------------------------- SRM: pure functions
def test_pixel_grid_is_the_pixel_centres():
    grid = pixel_grid(2, 4)
    assert grid.shape == (2, 4, 2)
    assert torch.allclose(grid[0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x: (2j + 1) / 4 - 1
    assert torch.allclose(grid[:, 0, 1], torch.tensor([-0.5, 0.5]))  # y: (2i + 1) / 2 - 1


def test_flow_warp_shifts_a_synthetic_edge():
    x = torch.zeros(1, 1, 3, 8)
    x[..., 4:] = 1.0  # vertical edge between columns 3 and 4
    assert torch.equal(flow_warp(x, torch.zeros(1, 2, 3, 8)), x)  # zero offset: identity
    # out[j] = x[j + dx]; border padding repeats the last column
    assert flow_warp(x, _constant([2.0, 0.0], 3, 8))[0, 0, 1].tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    assert flow_warp(x, _constant([-1.0, 0.0], 3, 8))[0, 0, 1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    half = flow_warp(x, _constant([0.5, 0.0], 3, 8))[0, 0, 1]
    assert torch.allclose(half, torch.tensor([0, 0, 0, 0.5, 1, 1, 1, 1.0]))
    # a dy offset moves a horizontal edge
    xt = x.transpose(-1, -2)  # (1, 1, 8, 3): rows 4.. are 1
    assert flow_warp(xt, _constant([0.0, 3.0], 8, 3))[0, 0, :, 1].tolist() == [0, 1, 1, 1, 1, 1, 1, 1]


def test_flow_warp_groups_use_their_own_offsets():
    x = torch.zeros(1, 4, 1, 8)
    x[..., 4:] = 1.0
    out = flow_warp(x, _constant([1.0, 0.0, -2.0, 0.0], 1, 8), groups=2)  # channels 0-1: +1 px, channels 2-3: -2 px
    assert out[0, 0, 0].tolist() == out[0, 1, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert out[0, 2, 0].tolist() == out[0, 3, 0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="offset groups"):
        flow_warp(torch.zeros(1, 3, 1, 8), torch.zeros(1, 4, 1, 8), groups=2)


def test_flow_warp_in_fp32_under_autocast():
    ramp = torch.arange(256.0).view(1, 1, 1, 256).expand(1, 1, 2, 256).contiguous()  # value = column index
    offsets = _constant([0.25, 0.0], 2, 256).bfloat16()  # as produced by a conv under CPU autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flow_warp(ramp, offsets)
    assert out.dtype == torch.float32
    # with the grid in bf16 normalised coordinates this ramp would be off by up to 0.25 (measured)
    assert torch.allclose(out[0, 0, 0, :255], ramp[0, 0, 0, :255] + 0.25, atol=1e-3)


def test_neighbor_average_hand_made():
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 9.0
    uniform = torch.zeros(1, 9, 5, 5)
    out = neighbor_average(spike, uniform, 3)
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = 1.0  # a 3x3 box filter spreads 9 over the 3x3 neighbourhood
    assert torch.allclose(out, expected)
    # weights concentrated on window index 5 = (dy 0, dx +1): every pixel takes its right neighbour's offset
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 2, 5, 5).contiguous()
    right = torch.full((1, 9, 5, 5), -1e4)
    right[:, 5] = 0.0
    assert neighbor_average(ramp, right, 3)[0, 0, 0].tolist() == [1, 2, 3, 4, 4]  # replicate padding at the border
    # a constant field is unchanged whatever the weights (replicate padding)
    assert torch.allclose(neighbor_average(_constant([2.0, -1.0], 5, 5), torch.randn(1, 9, 5, 5), 3), _constant([2.0, -1.0], 5, 5))


# ---------------------------------------------------------------- SRM module
def test_srm_equals_bilinear_upsample_and_add_at_init():
    torch.manual_seed(0)
    srm = SemanticRefinementModule(32, reduced_dim=32)
    low, guide = torch.randn(2, 32, 5, 6), torch.randn(2, 32, 10, 12)
    expected = guide + torch.nn.functional.interpolate(low, size=(10, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(srm(low, guide), expected, atol=1e-5)
    delta, _ = srm.predict_offsets(torch.randn(2, 32, 10, 12), guide)
    assert delta.shape == (2, 2, 10, 12) and not delta.any()


def test_srm_hand_set_constant_offset_shifts_the_upsampled_edge():
    srm = SemanticRefinementModule(8, reduced_dim=32, offset_groups=1)
    low = torch.zeros(1, 8, 4, 4)
    low[..., 2:] = 1.0  # edge between coarse columns 1 and 2
    guide = torch.zeros(1, 8, 8, 8)
    # bilinear x2 (align_corners=False) samples coarse column j / 2 - 0.25: the edge (value 0.5) sits at x = 3.5
    assert srm(low, guide)[0, 0, 0].tolist() == pytest.approx([0, 0, 0, 0.25, 0.75, 1, 1, 1], abs=1e-6)
    with torch.no_grad():
        srm.offset.bias.copy_(torch.tensor([2.0, 0.0]))  # weights stay 0: dx = +2 px everywhere
    # out[j] = up[j + 2]: the edge moves 2 px left, to x = 1.5; the neighbour averaging keeps a constant field
    assert srm(low, guide)[0, 0, 0].tolist() == pytest.approx([0, 0.25, 0.75, 1, 1, 1, 1, 1], abs=1e-6)
    with torch.no_grad():
        srm.offset.bias.copy_(torch.tensor([-1.0, 0.0]))
    assert srm(low, guide)[0, 0, 0].tolist() == pytest.approx([0, 0, 0, 0, 0.25, 0.75, 1, 1], abs=1e-6)


def test_srm_rejects_bad_options():
    with pytest.raises(ValueError, match="SRM.OFFSET_GROUPS"):
        SemanticRefinementModule(32, reduced_dim=32, offset_groups=3)
    with pytest.raises(ValueError, match="SRM.NEIGHBOR_KERNEL"):
        SemanticRefinementModule(32, reduced_dim=32, neighbor_kernel=2)
    assert not hasattr(SemanticRefinementModule(32, reduced_dim=32, neighbor_kernel=0), "neighbor")


# ---------------------------------------------------------------- SRM / CRM inside the pixel decoder
def _decoder(cls=BasePixelDecoder, **options):
    if cls is TransformerEncoderPixelDecoder:
        options.update(transformer_dropout=0.0, transformer_nheads=2, transformer_dim_feedforward=32, transformer_enc_layers=1, transformer_pre_norm=False)
    return cls(SHAPES, conv_dim=32, mask_dim=16, **options)


def _same_outputs(a, b, atol):
    fa, fb = a.forward_features(_features()), b.forward_features(_features())
    ok = torch.allclose(fa[0], fb[0], atol=atol) and all(torch.allclose(x, y, atol=atol) for x, y in zip(fa[2], fb[2]))
    return ok and (fa[1] is None) == (fb[1] is None) and (fa[1] is None or torch.allclose(fa[1], fb[1], atol=atol))


@pytest.mark.parametrize("cls", [BasePixelDecoder, TransformerEncoderPixelDecoder])
def test_decoder_with_srm_equals_bilinear_at_init_and_loads_old_checkpoints(cls):
    torch.manual_seed(0)
    bilinear, nearest = _decoder(cls, upsampler="bilinear"), _decoder(cls)
    srm = _decoder(cls, upsampler="srm")
    assert set(srm.srm) == {"res2", "res3", "res4"}  # every merge: 32->16, 16->8, 8->4
    # a checkpoint without SRM loads: only the new srm.* parameters are missing, nothing is renamed
    assert set(bilinear.state_dict()) == set(nearest.state_dict())
    missing, unexpected = srm.load_state_dict(bilinear.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("srm.") for k in missing)
    nearest.load_state_dict(bilinear.state_dict())
    for m in (bilinear, nearest, srm):
        m.eval()
    with torch.no_grad():
        assert _same_outputs(srm, bilinear, atol=1e-5)
        assert not _same_outputs(srm, nearest, atol=1e-3)  # equal to bilinear, not to MaskFormer's nearest


def test_decoder_srm_levels_and_option_errors():
    assert set(_decoder(upsampler="srm", srm_levels=("res2",)).srm) == {"res2"}
    assert len(_decoder(srm_levels=("res2",)).srm) == 0  # LEVELS is read only with UPSAMPLER "srm"
    with pytest.raises(ValueError, match="SRM.LEVELS"):
        _decoder(upsampler="srm", srm_levels=("res5",))  # res5 is the coarsest level: nothing merges into it
    with pytest.raises(ValueError, match="UPSAMPLER"):
        _decoder(upsampler="bicubic")
    with pytest.raises(ValueError, match="CONTEXT_MODULE"):
        _decoder(context_module="ppm")


def test_decoder_srm_under_cpu_autocast():
    decoder = _decoder(upsampler="srm").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, _, multi_scale = decoder.forward_features(_features())
    assert mask_features.shape == (2, 16, 16, 16) and torch.isfinite(mask_features.float()).all()
    assert [tuple(m.shape[-2:]) for m in multi_scale] == [(2, 2), (4, 4), (8, 8), (16, 16)]


# ---------------------------------------------------------------- CRM
def test_channel_attention_hand_made():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # two orthogonal channels, N = 2
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)  # softmax([1/sqrt(2), 0])[0]
    expected = torch.tensor([[a, 1 - a], [1 - a, a]]).view(1, 2, 1, 2)
    assert torch.allclose(channel_attention(z), expected, atol=1e-6)


def test_spatial_attention_hand_made():
    q = torch.tensor([2.0, 0.0]).view(1, 1, 1, 2)  # C' = 1, positions 0 and 1
    v = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    # A[0] = softmax([4, 0]), A[1] = softmax([0, 0]) = [0.5, 0.5]
    e4 = math.exp(4.0)
    expected = torch.tensor([(e4 * 1 + 3) / (e4 + 1), 2.0]).view(1, 1, 1, 2)
    assert torch.allclose(spatial_attention(q, q, v), expected, atol=1e-6)


def test_crm_is_identity_at_init_and_not_after():
    torch.manual_seed(0)
    feats = list(_features().values())
    crm = ContextualRefinementModule([f.shape[1] for f in feats], reduced_dim=32)
    assert torch.equal(crm(feats), feats[-1])
    with torch.no_grad():
        crm.out.weight.normal_()
        crm.alpha.fill_(1.0)
        crm.beta.fill_(1.0)
    out = crm(feats)
    assert out.shape == feats[-1].shape and not torch.allclose(out, feats[-1])
    with pytest.raises(ValueError, match="CRM"):
        crm(feats[1:])
    with pytest.raises(ValueError, match="CRM.REDUCED_DIM"):
        ContextualRefinementModule([4, 8], reduced_dim=4)


@pytest.mark.parametrize("cls", [BasePixelDecoder, TransformerEncoderPixelDecoder])
def test_decoder_with_crm_is_identity_at_init_and_loads_old_checkpoints(cls):
    torch.manual_seed(0)
    plain, crm = _decoder(cls), _decoder(cls, context_module="crm", crm_reduced_dim=32)
    missing, unexpected = crm.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("crm.") for k in missing)
    plain.eval()
    crm.eval()
    with torch.no_grad():
        assert _same_outputs(crm, plain, atol=0)


# ---------------------------------------------------------------- inside the full model
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("srm_crm"))
    _write_dataset(root, n=4)
    return root


@pytest.mark.parametrize(
    "opts,new_params",
    [
        (["MODEL.SEM_SEG_HEAD.UPSAMPLER", "srm"], ["srm.res2.offset.weight", "srm.res4.neighbor.weight"]),
        (["MODEL.SEM_SEG_HEAD.CONTEXT_MODULE", "crm", "MODEL.SEM_SEG_HEAD.CRM.REDUCED_DIM", "32"], ["crm.out.weight", "crm.alpha", "crm.reduce.weight"]),
    ],
    ids=["srm", "crm"],
)
def test_trains_inside_simformer(data, name, opts, new_params):
    register_simulated_weakshot(name, os.path.join(data, "images"), os.path.join(data, "full"), CLASSES, NOVEL)
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(BASE_CONFIG)
    cfg.merge_from_list(TINY + opts)
    cfg.MODEL.META_ARCHITECTURE = "SimFormer"
    cfg.MODEL.SIMFORMER.COMP_LOSS_WEIGHT = 0.2
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.DATASET_MAPPER_NAME = "WeakShotDatasetMapper"
    cfg.SOLVER.BASE_LR = 1e-3
    torch.manual_seed(0)
    mapper = build_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get(name)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    params = dict(model.sem_seg_head.pixel_decoder.named_parameters())
    before = {k: params[k].detach().clone() for k in new_params}
    for step in range(3):
        losses = model([mapper(d) for d in dicts[2 * step % len(dicts) :][:2]])
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    # gradients reach the new parameters (those fed by a zero-initialised layer from the second step on)
    for k in new_params:
        assert not torch.equal(before[k], params[k]), k
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 40, 48, dtype=torch.uint8), "height": 40, "width": 48}])
    assert out[0]["sem_seg"].shape == (5, 40, 48)
