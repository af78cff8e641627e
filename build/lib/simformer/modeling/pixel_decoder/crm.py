"""Contextual refinement module (CRM): global channel and spatial context added to the coarsest backbone feature.

Paper: Wang et al., "A Deep Semantic Segmentation Network with Semantic and Contextual Refinements",
arXiv 2412.08671. Its code is not public and only the abstract was available, which says: CRM captures global
context across both the spatial and the channel dimensions, and aggregates the semantic maps of all four
backbone stages to enrich the channel context (a third-party summary adds: sequential channel-then-spatial
attention). **Everything below is our design** (spec /work/shared/specs/related_methods.md §B.4, §D.2):

1. average-pool every stage to the coarsest stage's size, concatenate, 1x1 conv (+ norm, ReLU) to C_z: ``Z``;
2. channel self-attention (DANet-style): ``Z_c = Z + α · softmax(Zf Zfᵀ / √N) Zf`` (``Zf``: (C_z, N), N = h·w);
3. spatial self-attention: ``Z_s = Z_c + β · v softmax(qᵀk / √(C_z/8))ᵀ``, q, k = 1x1 convs to C_z/8, v = Z_c;
4. ``T' = T + Conv1x1(Z_s)`` with T the coarsest stage (res5).

α and β start at 0 and the output conv is zero-initialised, so CRM starts as the exact identity on T.
"""
from typing import List, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, get_norm
from torch import nn
from torch.nn import functional as F

__all__ = ["channel_attention", "spatial_attention", "ContextualRefinementModule"]


def channel_attention(z: torch.Tensor) -> torch.Tensor:
    """z: (B, C, H, W). Returns (B, C, H, W): ``out[b, c] = Σ_d A[b, c, d] z[b, d]`` with
    ``A[b] = softmax_d(Zf Zfᵀ / √N)``, ``Zf = z[b].flatten(1)`` (C, N), N = H·W (softmax in fp32)."""
    b, c, h, w = z.shape
    zf = z.flatten(2)
    attn = (torch.bmm(zf, zf.transpose(1, 2)) / (h * w) ** 0.5).float().softmax(dim=-1).to(z.dtype)  # (B, C, C)
    return torch.bmm(attn, zf).reshape(b, c, h, w)


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k: (B, C', H, W); v: (B, C, H, W). Returns (B, C, H, W): ``out[b, :, n] = Σ_m A[b, n, m] v[b, :, m]``
    with ``A[b] = softmax_m(q[b, :, n] · k[b, :, m] / √C')`` over the N = H·W positions (softmax in fp32)."""
    b, c, h, w = v.shape
    qf, kf = q.flatten(2), k.flatten(2)
    attn = (torch.bmm(qf.transpose(1, 2), kf) / qf.shape[1] ** 0.5).float().softmax(dim=-1).to(v.dtype)  # (B, N, N)
    return torch.bmm(v.flatten(2), attn.transpose(1, 2)).reshape(b, c, h, w)


class ContextualRefinementModule(nn.Module):
    """Multi-stage channel-then-spatial context added residually to the coarsest feature (module docstring).

    Args:
        in_channels: channels of the stage features, in the order they are passed to ``forward``; the last one
            is the coarsest (the feature that is refined).
        reduced_dim: C_z of the aggregated map (>= 8; the spatial attention uses C_z // 8 channels).
        norm: norm of the aggregation conv (detectron2 ``get_norm`` name; "" = none, with bias).
    """

    def __init__(self, in_channels: Sequence[int], *, reduced_dim: int = 512, norm: str = "GN"):
        super().__init__()
        if reduced_dim < 8:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.CRM.REDUCED_DIM={reduced_dim}: expected >= 8")
        self.in_channels = list(in_channels)
        use_bias = norm == ""
        self.reduce = Conv2d(sum(self.in_channels), reduced_dim, 1, bias=use_bias, norm=get_norm(norm, reduced_dim), activation=F.relu)
        self.query = Conv2d(reduced_dim, reduced_dim // 8, 1)
        self.key = Conv2d(reduced_dim, reduced_dim // 8, 1)
        for layer in (self.reduce, self.query, self.key):
            weight_init.c2_xavier_fill(layer)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))
        # zero-init: the module starts as the identity on the coarsest feature
        self.out = Conv2d(reduced_dim, self.in_channels[-1], 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        """features: stage maps (B, C_l, H_l, W_l) in the order of ``in_channels``, the coarsest last.
        Returns the refined coarsest map, (B, C_last, H_last, W_last)."""
        if [f.shape[1] for f in features] != self.in_channels:
            raise ValueError(f"CRM: feature channels {[f.shape[1] for f in features]}, built for {self.in_channels}")
        top = features[-1]
        size = top.shape[-2:]
        z = self.reduce(torch.cat([F.adaptive_avg_pool2d(f, size) for f in features[:-1]] + [top], dim=1))
        z = z + self.alpha * channel_attention(z)
        z = z + self.beta * spatial_attention(self.query(z), self.key(z), z)
        return top + self.out(z)
