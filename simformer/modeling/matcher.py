"""Hungarian matching of queries to targets, with targets that may lack a mask (weak-shot novel classes).

Cost of query q for target t:
    has-mask target:  C[q, t] = cost_class * (-p_q(c_t)) + cost_focal * focal(m_q, M_t) + cost_dice * dice(m_q, M_t)
    no-mask target:   C[q, t] = cost_class_no_mask * (-p_q(c_t))
A target without a mask (``has_mask=False``: a weak-shot novel class) is matched by its class score alone,
so its mask is whatever the class-agnostic query-pixel similarity learned on base classes gives (SimFormer's
proposal-pixel similarity transfer). The flag, not an emptiness test, decides, and targets may come in any
order. The returned target indices index the caller's target list directly (no ordering assumption).

Where the mask costs are evaluated (``num_points``):
    0    -- every pixel of the mask-logit resolution h x w (targets resized there, nearest): the exact costs;
    P>0  -- P uniform random points per image, shared by its queries, targets and decoder layers (logits
            read bilinearly, targets nearest at full resolution): an unbiased estimate of the continuous
            costs that needs Q*P + T*P values instead of Q*h*w + T*h*w (spec §11, a flagged deviation).
            With ``point_sampling`` "auto" (MODEL.MASK_FORMER.MATCHER_POINT_SAMPLING, the default) the
            points are used only when P < h*w; otherwise the exact every-pixel costs are both cheaper and
            free of sampling noise (R50 at 256²: h*w = 4,096 < 12,544 points, matching all 6 layers of a
            2-image batch takes 0.03 s instead of 0.26 s). "always" samples P points at every size
            (Mask2Former's matcher).

Costs of all decoder layers and images are computed on the predictions' device in fp32 (autocast off),
then moved to the host in one copy; only the assignment (scipy) runs per layer and image. There is no
other host-device synchronisation.
"""
from typing import Dict, List, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .losses.mask import batch_focal_dice_cost
from .losses.point_sampling import point_sample, uniform_point_coords

__all__ = ["HungarianMatcher", "POINT_SAMPLING"]

POINT_SAMPLING = ("auto", "always")  # matcher point sampling: only when fewer points than pixels / at every size

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1.0, cost_focal: float = 20.0, cost_dice: float = 1.0, cost_class_no_mask: float = None, num_points: int = 0, point_sampling: str = "auto"):
        super().__init__()
        if cost_class == 0 and cost_focal == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points < 0:
            raise ValueError(f"HungarianMatcher: num_points must be >= 0 (0 = every pixel), got {num_points} (MODEL.MASK_FORMER.TRAIN_NUM_POINTS)")
        self.cost_class = cost_class
        self.cost_class_no_mask = cost_class if cost_class_no_mask is None else cost_class_no_mask
        self.cost_focal = cost_focal
        self.cost_dice = cost_dice
        if point_sampling not in POINT_SAMPLING:
            raise ValueError(f"MODEL.MASK_FORMER.MATCHER_POINT_SAMPLING must be one of {POINT_SAMPLING}, got {point_sampling!r}")
        self.num_points = int(num_points)
        self.point_sampling = point_sampling

    def uses_points(self, size) -> bool:
        """Whether the mask costs of (h, w) = ``size`` mask logits are read at points (see the module doc)."""
        if self.num_points == 0:
            return False
        return self.point_sampling == "always" or self.num_points < size[0] * size[1]

    def _mask_values(self, pred_masks: List[torch.Tensor], tgt_masks: torch.Tensor):
        """N layers' (Q, h, w) logits of one image and its (T, H, W) targets -> (N*Q, P') logits, (T, P') targets.
        Each layer is read where it lies (no (N, Q, h, w) stack is built)."""
        size = pred_masks[0].shape[-2:]
        if not self.uses_points(size):
            tgt = F.interpolate(tgt_masks[:, None].float(), size=size, mode="nearest")[:, 0]
            return torch.cat([m.reshape(m.shape[0], -1).float() for m in pred_masks]), tgt.flatten(1)
        coords = uniform_point_coords(1, self.num_points, pred_masks[0].device)  # (1, P, 2): same points for all
        out = torch.cat([point_sample(m[None].float(), coords)[0] for m in pred_masks])  # (N*Q, P)
        tgt = point_sample(tgt_masks[None].float(), coords, mode="nearest")[0]  # (T, P)
        return out, tgt

    @torch.no_grad()
    def layer_cost_matrices(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, targets: List[Dict]) -> List[torch.Tensor]:
        """Costs of N decoder layers at once.

        Args:
            pred_logits: (N, B, Q, K+1) class logits of N layers.
            pred_masks: (N, B, Q, h, w) mask logits, or a list of N (B, Q, h, w) tensors.
            targets: B dicts with labels (T_b,), masks (T_b, H, W), optional has_mask (T_b,) bool.
        Returns:
            B tensors (N, Q, T_b), float32 on the predictions' device.
        """
        costs = []
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            for b, tgt in enumerate(targets):
                labels = tgt["labels"]
                prob = pred_logits[:, b].float().softmax(-1)  # (N, Q, K+1)
                has_mask = tgt.get("has_mask")
                if has_mask is None:
                    has_mask = torch.ones_like(labels, dtype=torch.bool)
                class_weight = torch.where(has_mask, self.cost_class, self.cost_class_no_mask).to(prob.dtype)
                cost = -class_weight * prob[..., labels]  # (N, Q, T)
                if (self.cost_focal or self.cost_dice) and len(labels):
                    out, tgt_mask = self._mask_values([m[b] for m in pred_masks], tgt["masks"])
                    mask_cost = batch_focal_dice_cost(out, tgt_mask, self.cost_focal, self.cost_dice)
                    # no-mask targets: class term only (a select, not a boolean index: no host sync)
                    cost = cost + torch.where(has_mask, mask_cost, torch.zeros_like(mask_cost)).view(cost.shape)
                costs.append(cost)
        return costs

    @torch.no_grad()
    def cost_matrices(self, pred_logits, pred_masks, targets: List[Dict]) -> List[torch.Tensor]:
        """(B, Q, K+1), (B, Q, h, w), targets[b] = {labels (T,), masks (T, H, W), has_mask (T,) optional}
        -> list of B cost matrices (Q, T_b), float32 on the predictions' device."""
        return [c[0] for c in self.layer_cost_matrices(pred_logits[None], pred_masks[None], targets)]

    @torch.no_grad()
    def match_layers(self, layers: List[Dict], targets: List[Dict]) -> List[Indices]:
        """Matches of several decoder layers (dicts with pred_logits (B, Q, K+1), pred_masks (B, Q, h, w) of
        equal shapes) with one device-to-host copy; -> per layer, per image (query indices, target indices),
        int64 on CPU, sorted by query index."""
        if any(o["pred_masks"].shape != layers[0]["pred_masks"].shape for o in layers):
            return [self.match_layers([o], targets)[0] for o in layers]  # layers at different resolutions
        num_layers, num_queries = len(layers), layers[0]["pred_logits"].shape[1]
        logits = torch.stack([o["pred_logits"] for o in layers])
        costs = self.layer_cost_matrices(logits, [o["pred_masks"] for o in layers], targets)
        sizes = [c.shape[-1] for c in costs]
        if any(s > num_queries for s in sizes):
            raise ValueError(f"HungarianMatcher: {max(sizes)} targets in an image but only {num_queries} queries (MODEL.MASK_FORMER.NUM_OBJECT_QUERIES)")
        flat = torch.cat([c.reshape(-1) for c in costs]).cpu().numpy() if costs else np.zeros(0)
        if not np.isfinite(flat).all():
            raise FloatingPointError("HungarianMatcher: non-finite matching cost (NaN/inf in predictions)")
        per_image, offset = [], 0
        for size in sizes:
            per_image.append(flat[offset : offset + num_layers * num_queries * size].reshape(num_layers, num_queries, size))
            offset += num_layers * num_queries * size
        out = []
        for layer in range(num_layers):
            indices = []
            for c in per_image:
                rows, cols = linear_sum_assignment(c[layer])
                indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
            out.append(indices)
        return out

    @torch.no_grad()
    def forward(self, outputs: Dict, targets: List[Dict]) -> Indices:
        """Returns, per image, (query indices, target indices), int64 on CPU, sorted by query index."""
        return self.match_layers([outputs], targets)[0]
