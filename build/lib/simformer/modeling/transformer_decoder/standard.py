"""MaskFormer's query decoder: N learned queries attend to one feature map through a DETR decoder;
every layer predicts class logits and mask embeddings (deep supervision)."""
import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from .build import TRANSFORMER_DECODER_REGISTRY
from .position_encoding import PositionEmbeddingSine
from .transformer import TransformerDecoder, TransformerDecoderLayer

__all__ = ["StandardTransformerDecoder", "MLP", "query_decoder_kwargs"]


def query_decoder_kwargs(cfg, in_channels, mask_classification):
    """Constructor arguments every query decoder shares, from ``MODEL.MASK_FORMER`` / ``SEM_SEG_HEAD``."""
    mf = cfg.MODEL.MASK_FORMER
    return {
        "in_channels": in_channels,
        "mask_classification": mask_classification,
        "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        "hidden_dim": mf.HIDDEN_DIM,
        "num_queries": mf.NUM_OBJECT_QUERIES,
        "nheads": mf.NHEADS,
        "dropout": mf.DROPOUT,
        "dim_feedforward": mf.DIM_FEEDFORWARD,
        "dec_layers": mf.DEC_LAYERS,
        "pre_norm": mf.PRE_NORM,
        "deep_supervision": mf.DEEP_SUPERVISION,
        "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
    }


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers: (..., in) -> (..., out)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class StandardTransformerDecoder(nn.Module):
    """Inputs: ``x`` (B, C_in, h, w) features (res5 or the pixel decoder's transformer-encoder output),
    ``mask_features`` (B, D, H', W'). Outputs per layer: class logits (B, Q, K+1) and mask logits
    m_q(p) = <e_q, F(p)> (B, Q, H', W'); the final layer's mask embeddings e_q (B, Q, D) as ``mask_embed``."""

    @configurable
    def __init__(self, in_channels, *, num_classes, hidden_dim, num_queries, nheads, dropout, dim_feedforward, dec_layers, pre_norm, mask_dim, enforce_input_project, deep_supervision=True, mask_classification=True):
        super().__init__()
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        layer = TransformerDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
        self.decoder = TransformerDecoder(layer, dec_layers, nn.LayerNorm(hidden_dim))
        self.num_queries = num_queries
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
            weight_init.c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        self.aux_loss = deep_supervision
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self._reset_transformer_parameters()

    def _reset_transformer_parameters(self):
        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        return query_decoder_kwargs(cfg, in_channels, mask_classification)

    def forward(self, x, mask_features, mask=None):
        """``mask`` (B, h, w) bool marks padding in ``x`` (optional)."""
        pos = self.pe_layer(x, mask).flatten(2).transpose(1, 2)  # (B, hw, C)
        memory = self.input_proj(x).flatten(2).transpose(1, 2)
        key_padding = mask.flatten(1) if mask is not None else None
        bs = memory.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(bs, -1, -1)
        tgt = torch.zeros_like(query_pos)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=key_padding, pos=pos, query_pos=query_pos)  # (L, B, Q, C)

        if not (self.aux_loss and self.training):
            hs = hs[-1:]  # intermediate layers are only needed for deep supervision
        mask_embed = self.mask_embed(hs)  # (L, B, Q, D)
        pred_masks = torch.einsum("lbqc,bchw->lbqhw", mask_embed, mask_features)
        pred_logits = self.class_embed(hs) if self.mask_classification else None  # (L, B, Q, K+1)
        # unbind, not per-layer indexing: its backward stacks the L gradients once, where L selects would
        # each scatter into a zero-filled (L, B, Q, h, w) gradient
        pred_masks = pred_masks.unbind(0)
        pred_logits = pred_logits.unbind(0) if pred_logits is not None else None
        out = {"pred_masks": pred_masks[-1], "mask_embed": mask_embed[-1]}  # mask_embed (B, Q, D): final layer
        if pred_logits is not None:
            out["pred_logits"] = pred_logits[-1]
        if self.aux_loss and self.training:
            out["aux_outputs"] = [
                {"pred_masks": pred_masks[i], **({"pred_logits": pred_logits[i]} if pred_logits is not None else {})}
                for i in range(hs.shape[0] - 1)
            ]
        return out
