"""Masked-attention query decoder (the Mask2Former decoder design, written for this project).

Differences from ``StandardTransformerDecoder`` (DETR decoder over one feature map):

* multi-scale memory: layer ``l`` attends to pixel-decoder level ``l % num_feature_levels``, coarsest
  first (with the FPN of ``fpn.py`` and IN_FEATURES res2..res5: strides 32, 16, 8). Each level gets a
  1x1 projection to ``hidden_dim``, a learned level embedding (added to the values and keys) and a sine
  position encoding (added to the keys only);
* masked cross-attention: query ``q`` only attends to the pixels where the previous prediction's mask
  probability ``sigmoid(m_q) > 0.5`` at that level's resolution; a query whose predicted mask is empty
  there attends to every pixel;
* layer order cross-attention -> self-attention -> FFN; queries start from learned features (plus learned
  positional embeddings) instead of zeros, and a prediction is made before the first layer too (it builds
  the first attention mask).

With ``L = dec_layers`` there are ``L + 1`` predictions P_0 (initial queries), P_1 .. P_L. P_L is the output
(``pred_logits`` / ``pred_masks``). The meta-architectures weight ``L - 1`` auxiliary outputs (suffixes
``_0 .. _{L-2}``, see ``MaskFormer.from_config``), so exactly ``L - 1`` are returned in training:
``supervise_initial=True`` (default, as in Mask2Former where the initial learned queries act like region
proposals): P_0, P_1, .. P_{L-2} (P_{L-1} only builds the last attention mask); ``supervise_initial=False``:
P_1 .. P_{L-1} (P_0 only builds the first attention mask).
"""
from typing import List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from .build import TRANSFORMER_DECODER_REGISTRY
from .position_encoding import PositionEmbeddingSine
from .standard import MLP, query_decoder_kwargs

__all__ = ["MaskedAttentionTransformerDecoder", "MaskedAttentionDecoderLayer", "build_attention_mask"]


def build_attention_mask(mask_logits: torch.Tensor, size, nheads: int, threshold: float = 0.5) -> torch.Tensor:
    """Masked-attention mask from mask logits.

    mask_logits (B, Q, H, W) -> bool (B * nheads, Q, h * w) at ``size = (h, w)``, True = may NOT attend
    (``nn.MultiheadAttention`` turns True into -inf before the softmax). A pixel is allowed when the
    bilinearly resized mask probability is > ``threshold``; a query with no allowed pixel is allowed
    everywhere (no fully masked softmax rows). Row ``b * nheads + h`` is image ``b``, head ``h`` (the layout
    ``nn.MultiheadAttention`` expects). No gradient flows through the mask.
    """
    with torch.no_grad():
        m = F.interpolate(mask_logits.detach(), size=tuple(size), mode="bilinear", align_corners=False)
        blocked = ~(m.sigmoid().flatten(2) > threshold)  # (B, Q, hw)
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)  # empty mask -> attend everywhere (not in place: exportable)
        return blocked.repeat_interleave(nheads, dim=0)


class MaskedAttentionDecoderLayer(nn.Module):
    """Cross-attention (masked) -> self-attention -> FFN, each with a residual and a LayerNorm (post-norm,
    or pre-norm with ``normalize_before``). Batch-first sequences: queries (B, Q, C), memory (B, HW, C)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.norm_self = nn.LayerNorm(d_model)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout_cross = nn.Dropout(dropout)
        self.dropout_self = nn.Dropout(dropout)
        self.dropout_ffn = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _block(self, tgt, norm, dropout, fn):
        """Residual sub-block: tgt + dropout(fn(x)) with x = norm(tgt) (pre-norm) or norm after the sum."""
        if self.normalize_before:
            return tgt + dropout(fn(norm(tgt)))
        return norm(tgt + dropout(fn(tgt)))

    def forward(self, tgt, memory, attn_mask: Optional[torch.Tensor] = None, pos=None, query_pos=None):
        tgt = self._block(tgt, self.norm_cross, self.dropout_cross, lambda x: self.cross_attn(x + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0])
        tgt = self._block(tgt, self.norm_self, self.dropout_self, lambda x: self.self_attn(x + query_pos, x + query_pos, x, need_weights=False)[0])
        return self._block(tgt, self.norm_ffn, self.dropout_ffn, lambda x: self.linear2(self.dropout(F.relu(self.linear1(x)))))


@TRANSFORMER_DECODER_REGISTRY.register()
class MaskedAttentionTransformerDecoder(nn.Module):
    """Inputs: ``multi_scale_features`` (list of (B, C_in, h_l, w_l), coarsest first, as returned third by
    the pixel decoder's ``forward_features``), ``mask_features`` (B, D, H', W'). Outputs: ``pred_logits``
    (B, Q, K+1), ``pred_masks`` (B, Q, H', W'), ``aux_outputs`` in training with deep supervision
    (``dec_layers - 1`` dicts, see the module docstring)."""

    # MaskFormerHead passes the pixel decoder's multi-scale maps (keyword ``multi_scale_features``) and
    # builds this decoder with in_channels = MODEL.SEM_SEG_HEAD.CONVS_DIM.
    uses_multi_scale = True

    @configurable
    def __init__(self, in_channels, *, num_classes, hidden_dim, num_queries, nheads, dropout, dim_feedforward, dec_layers, pre_norm, mask_dim, enforce_input_project, num_feature_levels=3, supervise_initial=True, mask_threshold=0.5, deep_supervision=True, mask_classification=True):
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"MaskedAttentionTransformerDecoder needs dec_layers >= 1, got {dec_layers}")
        self.mask_classification = mask_classification
        self.aux_loss = deep_supervision
        self.supervise_initial = supervise_initial
        self.num_queries = num_queries
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.mask_threshold = mask_threshold

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
            else:
                proj = nn.Identity()
            self.input_proj.append(proj)

        self.layers = nn.ModuleList(MaskedAttentionDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers))
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learned initial query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learned query positional embeddings
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        n_in = len(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        if mf.MASKED_ATTN.NUM_FEATURE_LEVELS > n_in:
            raise ValueError(f"MODEL.MASK_FORMER.MASKED_ATTN.NUM_FEATURE_LEVELS={mf.MASKED_ATTN.NUM_FEATURE_LEVELS} exceeds the pixel decoder's {n_in} levels (MODEL.SEM_SEG_HEAD.IN_FEATURES)")
        return {
            **query_decoder_kwargs(cfg, in_channels, mask_classification),
            "num_feature_levels": mf.MASKED_ATTN.NUM_FEATURE_LEVELS,
            "supervise_initial": mf.MASKED_ATTN.SUPERVISE_INITIAL,
            "mask_threshold": mf.MASKED_ATTN.MASK_THRESHOLD,
        }

    def _predict(self, tgt, mask_features, attn_size, with_logits: bool):
        """Queries (B, Q, C) -> (class logits (B, Q, K+1) or None, mask logits (B, Q, H', W'), attention
        mask for the next layer at ``attn_size`` or None, mask embeddings (B, Q, D))."""
        x = self.decoder_norm(tgt)
        logits = self.class_embed(x) if (with_logits and self.mask_classification) else None
        embed = self.mask_embed(x)
        masks = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        attn_mask = build_attention_mask(masks, attn_size, self.num_heads, self.mask_threshold) if attn_size is not None else None
        return logits, masks, attn_mask, embed

    def forward(self, x, mask_features, mask=None, multi_scale_features: Optional[List[torch.Tensor]] = None):
        """``x`` and ``mask`` (the single-map inputs of StandardTransformerDecoder) are ignored: the
        memory is the first ``num_feature_levels`` maps of ``multi_scale_features`` (coarsest first)."""
        if multi_scale_features is None or len(multi_scale_features) < self.num_feature_levels:
            got = None if multi_scale_features is None else len(multi_scale_features)
            raise ValueError(f"MaskedAttentionTransformerDecoder needs {self.num_feature_levels} multi-scale feature maps (MaskFormerHead passes the pixel decoder's), got {got}")
        sizes, memories, positions = [], [], []
        for lvl in range(self.num_feature_levels):
            feat = multi_scale_features[lvl]
            sizes.append(feat.shape[-2:])
            # no padding mask: the encoding depends only on (h, w), so compute it once and broadcast
            positions.append(self.pe_layer(feat[:1]).flatten(2).transpose(1, 2))  # (1, hw, C)
            memories.append(self.input_proj[lvl](feat).flatten(2).transpose(1, 2) + self.level_embed.weight[lvl])

        bs = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(bs, -1, -1)
        tgt = self.query_feat.weight.unsqueeze(0).expand(bs, -1, -1)

        keep_aux = self.aux_loss and self.training
        # indices of the predictions P_0..P_L returned as aux outputs (L - 1 of them, see module docstring)
        aux_ids = set(range(0, self.num_layers - 1) if self.supervise_initial else range(1, self.num_layers)) if keep_aux else set()
        aux_outputs = []
        logits, masks, attn_mask, embed = self._predict(tgt, mask_features, sizes[0], with_logits=0 in aux_ids)
        if 0 in aux_ids:
            aux_outputs.append({"pred_masks": masks, "pred_logits": logits})
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_feature_levels
            tgt = layer(tgt, memories[lvl], attn_mask=attn_mask, pos=positions[lvl], query_pos=query_pos)
            last = i == self.num_layers - 1
            next_size = None if last else sizes[(i + 1) % self.num_feature_levels]
            logits, masks, attn_mask, embed = self._predict(tgt, mask_features, next_size, with_logits=last or (i + 1) in aux_ids)
            if (i + 1) in aux_ids:
                aux_outputs.append({"pred_masks": masks, "pred_logits": logits})

        out = {"pred_masks": masks, "mask_embed": embed}  # mask_embed (B, Q, D): final prediction
        if logits is not None:
            out["pred_logits"] = logits
        if keep_aux:
            if not self.mask_classification:
                aux_outputs = [{"pred_masks": a["pred_masks"]} for a in aux_outputs]
            out["aux_outputs"] = aux_outputs
        return out
