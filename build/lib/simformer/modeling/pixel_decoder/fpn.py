"""FPN pixel decoders (MaskFormer's ``BasePixelDecoder`` and its transformer-encoder variant), with the
optional SRM top-down upsampler and CRM context module (``srm.py``, ``crm.py``; off by default)."""
from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn
from torch.nn import functional as F

from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from ..transformer_decoder.transformer import TransformerEncoder, TransformerEncoderLayer
from .build import PIXEL_DECODER_REGISTRY
from .crm import ContextualRefinementModule
from .srm import SemanticRefinementModule

__all__ = ["BasePixelDecoder", "TransformerEncoderPixelDecoder"]

UPSAMPLERS = ("nearest", "bilinear", "srm")
CONTEXT_MODULES = ("none", "crm")


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(nn.Module):
    """Top-down FPN over the backbone features (coarsest first):

    coarsest: 3x3 conv + norm + ReLU; every finer level: lateral 1x1 conv + norm, add the upsampled coarser map,
    3x3 conv + norm + ReLU. ``mask_features`` = 3x3 conv (bias, no norm) of the finest map.
    Output stride = the finest input feature's stride (4 for res2).

    Options (all off by default, so existing checkpoints load unchanged):

    * ``upsampler``: how each merge upsamples the coarser map. "nearest" (MaskFormer), "bilinear"
      (align_corners=False) or "srm": the merges into ``srm_levels`` (named by their finer feature; empty = all)
      become ``SemanticRefinementModule(coarser, lateral)``, a learned per-pixel offset warp that equals
      "bilinear" at initialisation; the other merges are bilinear. Parameters: ``srm.<level>.*``.
    * ``context_module``: "none" or "crm": ``ContextualRefinementModule`` replaces the coarsest input feature
      (res5) by ``res5 + context(res2..res5)`` before the coarsest conv / transformer encoder; identity at
      initialisation. Parameters: ``crm.*``. The query decoder's own ``TRANSFORMER_IN_FEATURE`` (e.g. "res5")
      is read by the head from the backbone and is *not* refined; "transformer_encoder" is.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        upsampler: str = "nearest",
        srm_levels: Sequence[str] = (),
        srm_reduced_dim: int = 64,
        srm_offset_groups: int = 1,
        srm_neighbor_kernel: int = 3,
        srm_refine_iters: int = 1,
        context_module: str = "none",
        crm_reduced_dim: int = 512,
    ):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.UPSAMPLER={upsampler!r}: expected one of {UPSAMPLERS}")
        if context_module not in CONTEXT_MODULES:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.CONTEXT_MODULE={context_module!r}: expected one of {CONTEXT_MODULES}")
        input_shape = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, _ in input_shape]
        channels = [v.channels for _, v in input_shape]
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(channels):
            if idx == len(channels) - 1:
                lateral_conv = None
                output_conv = Conv2d(in_channels, conv_dim, 3, padding=1, bias=use_bias, norm=get_norm(norm, conv_dim), activation=F.relu)
            else:
                lateral_conv = Conv2d(in_channels, conv_dim, 1, bias=use_bias, norm=get_norm(norm, conv_dim))
                output_conv = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias, norm=get_norm(norm, conv_dim), activation=F.relu)
                weight_init.c2_xavier_fill(lateral_conv)
                self.add_module(f"adapter_{idx + 1}", lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # coarsest first, the order of the top-down pass
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, 3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

        self.upsampler = upsampler
        self.srm = nn.ModuleDict()  # merge target (finer feature name) -> SRM; empty unless upsampler == "srm"
        if upsampler == "srm":
            targets = self.in_features[:-1]
            unknown = sorted(set(srm_levels) - set(targets))
            if unknown:
                raise ValueError(f"MODEL.SEM_SEG_HEAD.SRM.LEVELS: {unknown} are not merge targets; expected a subset of {targets} (empty = all)")
            for name in srm_levels or targets:
                self.srm[name] = SemanticRefinementModule(
                    conv_dim, reduced_dim=srm_reduced_dim, offset_groups=srm_offset_groups, neighbor_kernel=srm_neighbor_kernel, refine_iters=srm_refine_iters, norm=norm
                )
        self.crm = ContextualRefinementModule(channels, reduced_dim=crm_reduced_dim, norm=norm) if context_module == "crm" else None

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "upsampler": head.UPSAMPLER,
            "srm_levels": tuple(head.SRM.LEVELS),
            "srm_reduced_dim": head.SRM.REDUCED_DIM,
            "srm_offset_groups": head.SRM.OFFSET_GROUPS,
            "srm_neighbor_kernel": head.SRM.NEIGHBOR_KERNEL,
            "srm_refine_iters": head.SRM.REFINE_ITERS,
            "context_module": head.CONTEXT_MODULE,
            "crm_reduced_dim": head.CRM.REDUCED_DIM,
        }

    def coarsest_map(self, x):
        """Coarsest FPN level from the coarsest backbone feature (overridden by the transformer variant)."""
        return self.output_convs[0](x), None

    def merge(self, name: str, coarser: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        """One top-down merge into level ``name``: coarser (B, D, h, w), lateral (B, D, H, W) -> (B, D, H, W)."""
        if name in self.srm:
            return self.srm[name](coarser, lateral)
        if self.upsampler == "nearest":
            return lateral + F.interpolate(coarser, size=lateral.shape[-2:], mode="nearest")
        return lateral + F.interpolate(coarser, size=lateral.shape[-2:], mode="bilinear", align_corners=False)

    def forward_features(self, features):
        """features: dict name -> (B, C_l, H_l, W_l). Returns (mask_features, encoder features or None, multi-scale maps)."""
        names = self.in_features[::-1]
        feats = [features[f] for f in names]
        if self.crm is not None:
            feats[0] = self.crm(feats[::-1])
        y, transformer_features = self.coarsest_map(feats[0])
        multi_scale = [y]
        for name, x, lateral_conv, output_conv in zip(names[1:], feats[1:], self.lateral_convs[1:], self.output_convs[1:]):
            y = output_conv(self.merge(name, y, lateral_conv(x)))
            multi_scale.append(y)
        return self.mask_features(y), transformer_features, multi_scale

    def forward(self, features):
        return self.forward_features(features)


@PIXEL_DECODER_REGISTRY.register()
class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """FPN whose coarsest level first goes through a transformer encoder (MaskFormer's "TransformerEncoder"
    pixel decoder); the encoder output can feed the query decoder (TRANSFORMER_IN_FEATURE "transformer_encoder")."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, transformer_dropout: float, transformer_nheads: int, transformer_dim_feedforward: int, transformer_enc_layers: int, transformer_pre_norm: bool, conv_dim: int, mask_dim: int, norm: str = "GN", **options):
        """``options``: the SRM / CRM keywords of ``BasePixelDecoder``."""
        super().__init__(input_shape, conv_dim=conv_dim, mask_dim=mask_dim, norm=norm, **options)
        coarsest_channels = sorted(input_shape.values(), key=lambda v: v.stride)[-1].channels
        self.input_proj = Conv2d(coarsest_channels, conv_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.input_proj)
        layer = TransformerEncoderLayer(conv_dim, transformer_nheads, transformer_dim_feedforward, transformer_dropout, transformer_pre_norm)
        self.transformer = TransformerEncoder(layer, transformer_enc_layers, nn.LayerNorm(conv_dim) if transformer_pre_norm else None)
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        # the coarsest output conv now takes the encoder's conv_dim channels
        use_bias = norm == ""
        output_conv = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias, norm=get_norm(norm, conv_dim), activation=F.relu)
        weight_init.c2_xavier_fill(output_conv)
        self.add_module(f"layer_{len(self.in_features)}", output_conv)
        self.output_convs[0] = output_conv

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        mf = cfg.MODEL.MASK_FORMER
        ret.update(
            transformer_dropout=mf.DROPOUT,
            transformer_nheads=mf.NHEADS,
            transformer_dim_feedforward=mf.DIM_FEEDFORWARD,
            transformer_enc_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS,
            transformer_pre_norm=mf.PRE_NORM,
        )
        return ret

    def coarsest_map(self, x):
        x = self.input_proj(x)
        b, c, h, w = x.shape
        pos = self.pe_layer(x).flatten(2).transpose(1, 2)
        memory = self.transformer(x.flatten(2).transpose(1, 2), pos=pos)
        encoded = memory.transpose(1, 2).reshape(b, c, h, w)
        return self.output_convs[0](encoded), encoded
