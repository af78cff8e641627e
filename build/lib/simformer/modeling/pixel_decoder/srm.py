"""Semantic refinement module (SRM): a learned per-pixel offset warp in place of an FPN upsample-and-add.

Paper: Wang et al., "A Deep Semantic Segmentation Network with Semantic and Contextual Refinements",
arXiv 2412.08671. Its code is not public and only the abstract was available, which says: SRM learns a
transformation offset for each pixel of the upsampled feature map, guided by the high-resolution feature
map and by neighbouring offsets. **Everything below that sentence is our design** (spec
/work/shared/specs/related_methods.md §B.3, §D.2, in the style of flow-aligned upsamplers such as SFNet):

1. ``U = bilinear_up(F_low)`` (align_corners=False) to the guide's size;
2. ``Δ₀ = Conv3x3([Conv1x1(U); Conv1x1(F_high)])``, 2 numbers (dx, dy, in guide pixels) per offset group;
3. neighbour guidance: ``Δ(p) = Σ_k a_k(p) Δ₀(p + k)`` over the k×k neighbourhood, with
   ``a = softmax_k(Conv_kxk(Conv1x1(F_high)))``; borders are replicate-padded (so a constant field stays constant);
4. ``F_out = F_high + grid_sample(U, grid + Δ)`` (bilinear, border padding, align_corners=False, in fp32).

The offset conv and the neighbour-weight conv are zero-initialised: then ``Δ ≡ 0``, the neighbour weights are
uniform, and SRM is exactly bilinear upsample-and-add (up to float rounding of the sampling grid).
"""
from typing import Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, get_norm
from torch import nn
from torch.nn import functional as F

__all__ = ["pixel_grid", "flow_warp", "neighbor_average", "SemanticRefinementModule"]


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 2) normalised (x, y) coordinates of the pixel centres for ``grid_sample(align_corners=False)``:
    pixel (i, j) -> ((2j + 1) / W - 1, (2i + 1) / H - 1)."""
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def flow_warp(x: torch.Tensor, offsets: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Sample ``x`` at every pixel shifted by a per-pixel offset.

    Args:
        x: (B, C, H, W); C must be divisible by ``groups`` (channel group g is warped by offset group g).
        offsets: (B, 2 * groups, H, W) in pixels, ordered (dx_0, dy_0, dx_1, dy_1, ...).
    Returns:
        (B, C, H, W): ``out[b, c, i, j] = x[b, c, i + dy, j + dx]``, bilinear between pixels, border padding.
        Computed in fp32 (autocast off: offsets of a few pixels lose precision in half-precision
        normalised coordinates), returned in ``x.dtype``.
    """
    b, c, h, w = x.shape
    if offsets.shape != (b, 2 * groups, h, w):
        raise ValueError(f"flow_warp: offsets of shape {tuple(offsets.shape)}, expected {(b, 2 * groups, h, w)}")
    if c % groups:
        raise ValueError(f"flow_warp: {c} channels are not divisible into {groups} offset groups")
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float().reshape(b * groups, c // groups, h, w)
        # pixels -> normalised units: a shift of one pixel is 2 / W in x and 2 / H in y
        scale = torch.tensor([2.0 / w, 2.0 / h], device=x.device)
        delta = offsets.float().reshape(b * groups, 2, h, w).permute(0, 2, 3, 1) * scale
        grid = pixel_grid(h, w, device=x.device) + delta
        out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, c, h, w).to(x.dtype)


def neighbor_average(offsets: torch.Tensor, logits: torch.Tensor, kernel: int) -> torch.Tensor:
    """Content-weighted average of each pixel's neighbouring offsets.

    Args:
        offsets: (B, 2G, H, W).
        logits: (B, kernel², H, W) neighbour scores (row-major over the kernel window); a softmax over them
            gives the weights, shared by all offset channels.
        kernel: odd window size.
    Returns:
        (B, 2G, H, W): ``out[b, c, p] = Σ_k softmax(logits[b, :, p])_k · offsets[b, c, p + k]``; the border is
        replicate-padded, so a constant offset field is unchanged whatever the weights.
    """
    b, c, h, w = offsets.shape
    if kernel % 2 == 0 or logits.shape != (b, kernel * kernel, h, w):
        raise ValueError(f"neighbor_average: kernel {kernel} (must be odd) and logits {tuple(logits.shape)} do not match offsets {tuple(offsets.shape)}")
    pad = kernel // 2
    windows = F.unfold(F.pad(offsets, (pad, pad, pad, pad), mode="replicate"), kernel)  # (B, C * k², H * W)
    windows = windows.reshape(b, c, kernel * kernel, h, w)
    return (windows * logits.softmax(dim=1).unsqueeze(1)).sum(dim=2)


class SemanticRefinementModule(nn.Module):
    """One top-down merge ``(F_low, F_high) -> F_high + warp(bilinear_up(F_low), Δ)`` (see the module docstring).

    Args:
        channels: C of both inputs and of the output.
        reduced_dim: C_r of the compressed features that predict the offsets.
        offset_groups: G; channel group g of the upsampled map is warped by its own offset.
        neighbor_kernel: window of the neighbour-guided offset refinement; 0 disables it.
        refine_iters: how many times the neighbour averaging is applied (same weights each time).
        norm: norm of the two 1x1 compression convs (detectron2 ``get_norm`` name; "" = none, with bias).
    """

    def __init__(self, channels: int, *, reduced_dim: int = 64, offset_groups: int = 1, neighbor_kernel: int = 3, refine_iters: int = 1, norm: str = "GN"):
        super().__init__()
        if channels % offset_groups:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.SRM.OFFSET_GROUPS={offset_groups} must divide MODEL.SEM_SEG_HEAD.CONVS_DIM={channels}")
        if neighbor_kernel < 0 or (neighbor_kernel and neighbor_kernel % 2 == 0):
            raise ValueError(f"MODEL.SEM_SEG_HEAD.SRM.NEIGHBOR_KERNEL={neighbor_kernel}: expected 0 (off) or an odd size")
        if neighbor_kernel and refine_iters < 1:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.SRM.REFINE_ITERS={refine_iters}: expected >= 1 (or NEIGHBOR_KERNEL 0)")
        self.offset_groups = offset_groups
        self.neighbor_kernel = neighbor_kernel
        self.refine_iters = refine_iters
        use_bias = norm == ""
        self.compress_up = Conv2d(channels, reduced_dim, 1, bias=use_bias, norm=get_norm(norm, reduced_dim), activation=F.relu)
        self.compress_guide = Conv2d(channels, reduced_dim, 1, bias=use_bias, norm=get_norm(norm, reduced_dim), activation=F.relu)
        weight_init.c2_xavier_fill(self.compress_up)
        weight_init.c2_xavier_fill(self.compress_guide)
        # zero-init: Δ₀ ≡ 0 and uniform neighbour weights, i.e. plain bilinear upsample-and-add at the start
        self.offset = Conv2d(2 * reduced_dim, 2 * offset_groups, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        if neighbor_kernel:
            self.neighbor = Conv2d(reduced_dim, neighbor_kernel * neighbor_kernel, neighbor_kernel, padding=neighbor_kernel // 2)
            nn.init.zeros_(self.neighbor.weight)
            nn.init.zeros_(self.neighbor.bias)

    def predict_offsets(self, up: torch.Tensor, guide: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """up, guide: (B, C, H, W). Returns the offsets Δ (B, 2G, H, W) in guide pixels and Δ₀ before the
        neighbour refinement."""
        g = self.compress_guide(guide)
        delta0 = self.offset(torch.cat([self.compress_up(up), g], dim=1))
        delta = delta0
        if self.neighbor_kernel:
            logits = self.neighbor(g)
            for _ in range(self.refine_iters):
                delta = neighbor_average(delta, logits, self.neighbor_kernel)
        return delta, delta0

    def forward(self, low: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """low: (B, C, h, w) coarser map; guide: (B, C, H, W) finer (lateral) map. Returns (B, C, H, W)."""
        up = F.interpolate(low, size=guide.shape[-2:], mode="bilinear", align_corners=False)
        delta, _ = self.predict_offsets(up, guide)
        return guide + flow_warp(up, delta, self.offset_groups)
