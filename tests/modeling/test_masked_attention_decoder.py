"""MaskedAttentionTransformerDecoder: output contract, the masked-attention mask, and training through MaskFormer."""
import os

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances
from simformer import add_simformer_config
from simformer.data.dataset_mappers import label_map_to_targets
from simformer.engine import build_optimizer
from simformer.modeling.transformer_decoder import MaskedAttentionTransformerDecoder, StandardTransformerDecoder
from simformer.modeling.transformer_decoder.masked_attention import MaskedAttentionDecoderLayer, build_attention_mask
from tests.helpers import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic", "mask2former_R18_fully_supervised.yaml")
STANDARD_CONFIG = os.path.join(REPO, "configs", "synthetic", "maskformer_R18_fully_supervised.yaml")
TINY = tiny_model(4, queries=6, mask_dim=16, dec_layers=3) + ["MODEL.MASK_FORMER.NHEADS", "4"]


def _decoder(dec_layers=3, deep_supervision=True, supervise_initial=True, pre_norm=False, in_channels=8, mask_classification=True):
    torch.manual_seed(0)
    return MaskedAttentionTransformerDecoder(
        in_channels, num_classes=5, hidden_dim=16, num_queries=7, nheads=4, dropout=0.0, dim_feedforward=32, dec_layers=dec_layers,
        pre_norm=pre_norm, mask_dim=12, enforce_input_project=False, deep_supervision=deep_supervision,
        supervise_initial=supervise_initial, mask_classification=mask_classification,
    )  # fmt: skip


def _inputs(bs=2, in_channels=8, mask_dim=12):
    g = torch.Generator().manual_seed(1)
    # coarsest first, like BasePixelDecoder.forward_features (strides 32, 16, 8, 4 of a 64x64 input)
    multi_scale = [torch.randn(bs, in_channels, s, s, generator=g) for s in (2, 4, 8, 16)]
    mask_features = torch.randn(bs, mask_dim, 16, 16, generator=g)
    return multi_scale, mask_features


@pytest.mark.parametrize("dec_layers", [1, 3, 6])
@pytest.mark.parametrize("deep_supervision", [True, False])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_output_shapes_and_aux_count(dec_layers, deep_supervision, pre_norm):
    dec = _decoder(dec_layers, deep_supervision, pre_norm=pre_norm)
    multi_scale, mask_features = _inputs()
    dec.train()
    out = dec(None, mask_features, multi_scale_features=multi_scale)
    assert out["pred_logits"].shape == (2, 7, 6)
    assert out["pred_masks"].shape == (2, 7, 16, 16)
    if deep_supervision:
        # the meta-architecture weights DEC_LAYERS - 1 aux outputs (suffixes _0 .. _{L-2})
        assert len(out["aux_outputs"]) == dec_layers - 1
        for aux in out["aux_outputs"]:
            assert aux["pred_logits"].shape == (2, 7, 6) and aux["pred_masks"].shape == (2, 7, 16, 16)
    else:
        assert "aux_outputs" not in out
    dec.eval()
    with torch.no_grad():
        out_eval = dec(None, mask_features, multi_scale_features=multi_scale)
    assert "aux_outputs" not in out_eval
    assert torch.allclose(out_eval["pred_masks"], out["pred_masks"].detach(), atol=1e-5)


def test_without_mask_classification():
    dec = _decoder(mask_classification=False)
    multi_scale, mask_features = _inputs()
    out = dec(None, mask_features, multi_scale_features=multi_scale)
    assert "pred_logits" not in out and out["pred_masks"].shape == (2, 7, 16, 16)
    assert all(set(a) == {"pred_masks"} for a in out["aux_outputs"])


@pytest.mark.parametrize("supervise_initial", [True, False])
def test_which_predictions_are_aux(supervise_initial):
    """supervise_initial: aux = P_0 (learned queries, before any layer) .. P_{L-2}; else P_1 .. P_{L-1}."""
    dec = _decoder(dec_layers=3, supervise_initial=supervise_initial)
    multi_scale, mask_features = _inputs()
    out = dec(None, mask_features, multi_scale_features=multi_scale)
    q0 = dec.decoder_norm(dec.query_feat.weight)
    p0_masks = torch.einsum("qc,bchw->bqhw", dec.mask_embed(q0), mask_features)
    p0_logits = dec.class_embed(q0).expand(2, -1, -1)
    first = out["aux_outputs"][0]
    same = torch.allclose(first["pred_masks"], p0_masks, atol=1e-5) and torch.allclose(first["pred_logits"], p0_logits, atol=1e-5)
    assert same == supervise_initial


def test_needs_multi_scale_features():
    dec = _decoder()
    multi_scale, mask_features = _inputs()
    with pytest.raises(ValueError, match="multi-scale"):
        dec(multi_scale[0], mask_features)
    with pytest.raises(ValueError, match="multi-scale"):
        dec(None, mask_features, multi_scale_features=multi_scale[:2])


def test_attention_mask_empty_query_attends_everywhere_and_region_query_only_inside():
    nheads = 4
    logits = torch.full((2, 3, 8, 8), -5.0)  # every query empty ...
    logits[0, 1, :4, :4] = 5.0  # ... except image 0 / query 1: top-left quarter
    logits[1, 2, 4:, :] = 5.0  # and image 1 / query 2: bottom half
    blocked = build_attention_mask(logits, (4, 4), nheads)
    assert blocked.dtype == torch.bool and blocked.shape == (2 * nheads, 3, 16)
    region_tl = torch.zeros(4, 4, dtype=torch.bool)
    region_tl[:2, :2] = True
    region_bottom = torch.zeros(4, 4, dtype=torch.bool)
    region_bottom[2:] = True
    for h in range(nheads):  # row b * nheads + h = image b, head h
        assert not blocked[0 * nheads + h, 0].any() and not blocked[0 * nheads + h, 2].any()
        assert torch.equal(blocked[0 * nheads + h, 1], ~region_tl.flatten())
        assert not blocked[1 * nheads + h, 0].any() and not blocked[1 * nheads + h, 1].any()
        assert torch.equal(blocked[1 * nheads + h, 2], ~region_bottom.flatten())

    # in nn.MultiheadAttention, True = -inf before the softmax: zero weight outside the region
    attn = nn.MultiheadAttention(8, nheads, batch_first=True)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 16, 8)
    _, w = attn(q, kv, kv, attn_mask=blocked, need_weights=True, average_attn_weights=False)  # (B, heads, Q, HW)
    assert torch.isfinite(w).all()
    assert torch.all(w[0, :, 1][:, ~region_tl.flatten()] == 0) and torch.all(w[0, :, 1][:, region_tl.flatten()] > 0)
    assert torch.all(w[1, :, 2][:, ~region_bottom.flatten()] == 0)
    assert torch.all(w[0, :, 0] > 0)  # empty mask: attends everywhere


def test_attention_mask_threshold_and_resize():
    logits = torch.zeros(1, 1, 4, 4)  # p = 0.5 everywhere: not > 0.5, so empty -> attend everywhere
    assert not build_attention_mask(logits, (2, 2), 1).any()
    logits[0, 0, :, :2] = 3.0
    blocked = build_attention_mask(logits, (4, 4), 2)
    assert torch.equal(blocked[0, 0].view(4, 4)[:, :2], torch.zeros(4, 2, dtype=torch.bool))
    assert blocked[0, 0].view(4, 4)[:, 3].all()
    assert torch.equal(blocked[0], blocked[1])
    logits.requires_grad_(True)
    assert not build_attention_mask(logits, (2, 2), 1).requires_grad


def test_masked_cross_attention_ignores_memory_outside_the_mask():
    torch.manual_seed(0)
    layer = MaskedAttentionDecoderLayer(16, 4, 32, 0.0).eval()
    tgt, pos_q = torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    memory, pos = torch.randn(1, 9, 16), torch.randn(1, 9, 16)
    logits = torch.full((1, 2, 3, 3), -4.0)
    logits[0, 0, 0, :] = 4.0  # query 0 sees only the first row; query 1 (empty) sees everything
    attn_mask = build_attention_mask(logits, (3, 3), 4)
    changed = memory.clone()
    changed[0, 3:] += 10 * torch.randn(6, 16)  # only pixels outside query 0's mask change
    with torch.no_grad():
        # the self-attention mixes queries, so look at the cross-attention sub-block alone
        a = layer.cross_attn(tgt + pos_q, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        b = layer.cross_attn(tgt + pos_q, changed + pos, changed, attn_mask=attn_mask, need_weights=False)[0]
        full = layer(tgt, memory, attn_mask=attn_mask, pos=pos, query_pos=pos_q)
    assert torch.allclose(a[0, 0], b[0, 0], atol=1e-6)
    assert not torch.allclose(a[0, 1], b[0, 1], atol=1e-3)
    assert full.shape == (1, 2, 16) and torch.isfinite(full).all()


def _cfg(path=CONFIG, *opts):
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(TINY + list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _random_batch(n, size, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, num_classes, (4, 4), generator=g).repeat_interleave(size // 4, 0).repeat_interleave(size // 4, 1)
        classes, masks = label_map_to_targets(label, 255)
        inst = Instances((size, size))
        inst.gt_classes, inst.gt_masks = classes, masks
        image = (label[None].float() * 60 + 20 * torch.rand(3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
        out.append({"image": image, "instances": inst, "height": size, "width": size})
    return out


def test_config_builds_with_multi_scale_head():
    cfg = get_cfg()
    add_simformer_config(cfg)
    cfg.merge_from_file(CONFIG)
    model = build_model(cfg)
    head = model.sem_seg_head
    assert isinstance(head.predictor, MaskedAttentionTransformerDecoder) and head.multi_scale_predictor
    assert head.predictor.input_proj[0].in_channels == cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == head.predictor.num_layers
    # the standard decoder path is unchanged: res5 channels in, no multi-scale keyword
    std = build_model(_cfg(STANDARD_CONFIG)).sem_seg_head
    assert isinstance(std.predictor, StandardTransformerDecoder) and not std.multi_scale_predictor


def test_every_loss_term_is_weighted():
    """The criterion's loss keys (final + aux suffixes) are exactly the model's weight_dict keys."""
    cfg = _cfg()
    model = build_model(cfg)
    model.train()
    batch = _random_batch(2, 64, 4)
    images = model.preprocess_image(batch)
    outputs = model.sem_seg_head(model.backbone(images.tensor))
    losses = model.criterion(outputs, model.prepare_targets(batch, images))
    assert set(losses) == set(model.weight_dict)
    assert len(outputs["aux_outputs"]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1


def test_maskformer_overfits_one_batch():
    cfg = _cfg(CONFIG, "SOLVER.BASE_LR", "0.001")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    batch = _random_batch(2, 64, 4)
    totals = []
    for _ in range(12):
        losses = model(batch)
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert min(totals[-3:]) < 0.7 * totals[0], totals  # measured: 14.2 -> 6.3
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 64, "width": 64}])
    assert out[0]["sem_seg"].shape == (4, 64, 64)
