"""Set criterion of the mask-classification model: matching, named loss terms, deep supervision.

Loss terms (unweighted; the model multiplies by ``weight_dict``):
  loss_ce    -- CE over K+1 classes of every query (matched: its target's class, else no-object),
  loss_focal -- sigmoid focal loss of matched masks (targets with a mask only), full target resolution,
  loss_dice  -- dice loss of the same pairs.
Mask losses are summed over pairs and divided by the number of has-mask targets in the global batch.
Intermediate decoder layers (``aux_outputs``) add the same terms with suffix ``_<i>``.
"""
from typing import Dict, List

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .losses.classification import weighted_cross_entropy
from .losses.mask import dice_loss, sigmoid_focal_loss

__all__ = ["SetCriterion"]


def _global_mean_count(count: torch.Tensor) -> torch.Tensor:
    """Average a count over processes (so every process normalises by the same number), at least 1."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1)


class SetCriterion(nn.Module):
    def __init__(self, num_classes: int, matcher: nn.Module, eos_coef: float, losses=("labels", "masks")):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        unknown = set(self.losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown loss terms {sorted(unknown)}; expected 'labels', 'masks'")
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def loss_labels(self, outputs, targets, indices, num_masks):
        logits = outputs["pred_logits"].float()
        b, q, _ = logits.shape
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, src_idx, tgt_labels = self._matched(targets, indices, "labels", logits.device)
        target_classes[batch_idx, src_idx] = tgt_labels
        return {"loss_ce": weighted_cross_entropy(logits, target_classes, self.empty_weight.to(logits.dtype))}

    def loss_masks(self, outputs, targets, indices, num_masks):
        pred_masks = outputs["pred_masks"]
        device = pred_masks.device
        batch_idx, src_idx, tgt_idx = self._matched(targets, indices, None, device)
        has_mask = torch.cat([t.get("has_mask", torch.ones_like(t["labels"], dtype=torch.bool))[j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]).to(device)
        if batch_idx.numel() == 0 or not bool(has_mask.any()):
            zero = pred_masks.sum() * 0.0
            return {"loss_focal": zero, "loss_dice": zero}
        src = pred_masks[batch_idx[has_mask], src_idx[has_mask]]  # (M, h, w)
        tgt = torch.cat([t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)])[has_mask]  # (M, H, W)
        src = F.interpolate(src[:, None].float(), size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        src, tgt = src.flatten(1), tgt.flatten(1).to(src.dtype)
        return {
            "loss_focal": sigmoid_focal_loss(src, tgt).sum() / num_masks,
            "loss_dice": dice_loss(src, tgt).sum() / num_masks,
        }

    @staticmethod
    def _matched(targets, indices, field, device):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        if field is None:
            return batch_idx, src_idx, torch.cat([tgt for _, tgt in indices]).to(device)
        values = torch.cat([t[field][j.to(t[field].device)] for t, (_, j) in zip(targets, indices)]).to(device)
        return batch_idx, src_idx, values

    def _layer_losses(self, outputs, targets, num_masks):
        indices = self.matcher(outputs, targets)
        losses = {}
        for name in self.losses:
            losses.update(getattr(self, f"loss_{name}")(outputs, targets, indices, num_masks))
        return losses

    def forward(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        """outputs: pred_logits (B, Q, K+1), pred_masks (B, Q, h, w), optional aux_outputs;
        targets[b]: labels (T,), masks (T, H, W) at the padded input size, optional has_mask (T,)."""
        device = outputs["pred_masks"].device
        num_masks = sum(int(t["has_mask"].sum()) if "has_mask" in t else len(t["labels"]) for t in targets)
        num_masks = _global_mean_count(torch.as_tensor(float(num_masks), device=device))
        losses = self._layer_losses(outputs, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._layer_losses(aux, targets, num_masks).items()})
        return losses
