"""Hungarian matching of queries to targets, with targets that may lack a mask (weak-shot novel classes).

Cost of query q for target t (all computed at the mask-logit resolution H' x W'):
    has-mask target:  C[q, t] = cost_class * (-p_q(c_t)) + cost_focal * focal(m_q, M_t) + cost_dice * dice(m_q, M_t)
    no-mask target:   C[q, t] = cost_class_no_mask * (-p_q(c_t))
A target without a mask (``has_mask=False``: a weak-shot novel class) is matched by its class score alone,
so its mask is whatever the class-agnostic query-pixel similarity learned on base classes gives (SimFormer's
proposal-pixel similarity transfer). The flag, not an emptiness test, decides, and targets may come in any
order. The assignment is solved with scipy; the
returned target indices index the caller's target list directly (no ordering assumption).
"""
from typing import Dict, List, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .losses.mask import batch_dice_cost, batch_sigmoid_focal_cost

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    def __init__(self, cost_class: float = 1.0, cost_focal: float = 20.0, cost_dice: float = 1.0, cost_class_no_mask: float = None):
        super().__init__()
        if cost_class == 0 and cost_focal == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_class_no_mask = cost_class if cost_class_no_mask is None else cost_class_no_mask
        self.cost_focal = cost_focal
        self.cost_dice = cost_dice

    @torch.no_grad()
    def cost_matrices(self, pred_logits, pred_masks, targets: List[Dict]) -> List[torch.Tensor]:
        """(B, Q, K+1), (B, Q, h, w), targets[b] = {labels (T,), masks (T, H, W), has_mask (T,) optional}
        -> list of B cost matrices (Q, T_b), float32 on the predictions' device."""
        costs = []
        with torch.autocast(device_type=pred_logits.device.type, enabled=False):
            for b, tgt in enumerate(targets):
                labels = tgt["labels"]
                prob = pred_logits[b].float().softmax(-1)  # (Q, K+1)
                has_mask = tgt.get("has_mask")
                if has_mask is None:
                    has_mask = torch.ones_like(labels, dtype=torch.bool)
                class_weight = torch.where(has_mask, self.cost_class, self.cost_class_no_mask).to(prob.dtype)
                cost = -class_weight * prob[:, labels]  # (Q, T)
                if bool(has_mask.any()) and (self.cost_focal or self.cost_dice):
                    out_mask = pred_masks[b].float().flatten(1)  # (Q, h*w)
                    tgt_mask = tgt["masks"][has_mask].to(out_mask.dtype)
                    tgt_mask = F.interpolate(tgt_mask[:, None], size=pred_masks.shape[-2:], mode="nearest")[:, 0].flatten(1)
                    mask_cost = self.cost_focal * batch_sigmoid_focal_cost(out_mask, tgt_mask) + self.cost_dice * batch_dice_cost(out_mask, tgt_mask)
                    cost[:, has_mask] += mask_cost
                costs.append(cost)
        return costs

    @torch.no_grad()
    def forward(self, outputs: Dict, targets: List[Dict]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Returns, per image, (query indices, target indices), int64 on CPU, sorted by query index."""
        costs = self.cost_matrices(outputs["pred_logits"], outputs["pred_masks"], targets)
        sizes = [c.shape[1] for c in costs]
        num_queries = outputs["pred_logits"].shape[1]
        if any(s > num_queries for s in sizes):
            raise ValueError(f"HungarianMatcher: {max(sizes)} targets in an image but only {num_queries} queries (MODEL.MASK_FORMER.NUM_OBJECT_QUERIES)")
        # one device->host copy for the whole batch
        flat = torch.cat([c.reshape(-1) for c in costs]).cpu().numpy() if costs else np.zeros(0)
        indices, offset = [], 0
        for size in sizes:
            c = flat[offset : offset + num_queries * size].reshape(num_queries, size)
            offset += num_queries * size
            if not np.isfinite(c).all():
                raise FloatingPointError("HungarianMatcher: non-finite matching cost (NaN/inf in predictions)")
            rows, cols = linear_sum_assignment(c)
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
