"""SimFormer's criterion: the set criterion plus the weak-shot terms (spec §4).

Per decoder layer (with deep supervision, suffix ``_<i>``):
  loss_ce, loss_focal, loss_dice  -- as :class:`SetCriterion` (novel targets: class term only, no mask loss);
  loss_comp                       -- complementary loss: the union of the novel-matched masks (floored at
                                     the ignore-proposal logit) vs. the not-base, not-padding region.
Last layer only, for batches of image pairs [A1, B1, A2, B2, ...]:
  loss_cro_sim -- SimNet trained on base pixel pairs across the two images (running class balance);
  loss_cro_dit -- SimNet's similarities of novel/unlabelled pixel pairs distilled into the novel
                  semantic masks of the segmentation model.
Last layer only, any batch (optional):
  loss_pixel_contrast -- cross-image pixel contrast on the mask features of labelled pixels (base classes
                         by default), hard anchors from the detached semantic prediction (related_methods §D.3).

Targets (per image) in addition to SetCriterion's: ``sem_seg_raw`` (H, W) int64 label map that may hold
novel ids (ignore elsewhere; padding is ignore) and ``pad`` (H, W) bool.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ssa_adapter.losses import downsample_labels

from ..inference import semantic_inference
from .criterion import SetCriterion, host_matched_pairs
from .losses.weakshot import (
    DISTILL_TARGETS,
    balanced_pair_loss,
    complementary_loss,
    complementary_region_logits,
    distillation_loss,
    gather_points,
    pair_similarity_targets,
    parse_distill_func,
    partner_index,
    sample_points,
    student_scores,
    student_similarity,
)
from .pixel_contrast_head import PixelContrast
from .simnet import RunningPairBalance, SimNet

__all__ = ["SimFormerCriterion", "CONTRAST_CLASSES"]

# pixels contrasted: "base" = base classes with a mask target; "labelled" = every class with a mask target
# (base + pseudo-labelled novel classes when retraining)
CONTRAST_CLASSES = ("base", "labelled")

_NOT_BASE_KEY = "_not_base_regions"  # per-step cache of the complementary-loss target on targets[0]
_FILLER = -1.0e4  # mask logit of "no query" slots in the padded novel-mask tensor (below any floor)


class SimFormerCriterion(SetCriterion):
    def __init__(
        self,
        num_classes: int,
        matcher,
        eos_coef: float,
        *,
        novel_class_ids: Sequence[int] = (),
        ignore_label: int = 255,
        comp_loss: bool = False,
        ignore_proposal_logit: float = -2.9444,
        comp_focal_weight: float = 20.0,
        comp_dice_weight: float = 1.0,
        simnet: Optional[SimNet] = None,
        distill: bool = False,
        distill_func: str = "ce",
        distill_to: str = "NovelScore",
        cross_image_student: bool = True,
        base_points: int = 100,
        novel_points: int = 100,
        positive_fraction: float = 0.8,
        base_detach: bool = True,
        teacher_detach: bool = True,
        balance: Optional[RunningPairBalance] = None,
        pixel_contrast: Optional[PixelContrast] = None,
        contrast_classes: str = "base",
        num_points: int = 0,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        # num_points / oversample_ratio / importance_sample_ratio: SetCriterion's point-sampled mask losses
        super().__init__(num_classes, matcher, eos_coef, num_points=num_points, oversample_ratio=oversample_ratio, importance_sample_ratio=importance_sample_ratio)
        if contrast_classes not in CONTRAST_CLASSES:
            raise ValueError(f"MODEL.SIMFORMER.PIXEL_CONTRAST.CLASSES must be one of {CONTRAST_CLASSES}, got {contrast_classes!r}")
        if distill and simnet is None:
            raise ValueError("similarity distillation needs SimNet: set MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT > 0")
        if distill_to not in DISTILL_TARGETS:
            raise ValueError(f"MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_TO must be one of {DISTILL_TARGETS}, got {distill_to!r}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"MODEL.SIMFORMER.CROSS_IMG_SIM.POSITIVE_FRACTION must be in [0, 1], got {positive_fraction}")
        novel = sorted(int(c) for c in novel_class_ids)
        if any(not 0 <= c < num_classes for c in novel):
            raise ValueError(f"novel class ids {novel} outside [0, {num_classes})")
        if (comp_loss or simnet is not None) and not novel:
            raise ValueError("the complementary / cross-image losses need novel classes: the training dataset's metadata has no novel_class_ids")
        self.ignore_label = ignore_label
        self.comp_loss = comp_loss
        self.ignore_proposal_logit = float(ignore_proposal_logit)
        self.comp_focal_weight, self.comp_dice_weight = comp_focal_weight, comp_dice_weight
        self.simnet = simnet
        self.balance = balance if balance is not None or simnet is None else RunningPairBalance()
        self.distill = distill
        self.distill_fn = parse_distill_func(distill_func)
        self.distill_to = distill_to
        self.cross_image_student = cross_image_student
        self.base_points, self.novel_points = base_points, novel_points
        self.positive_fraction = positive_fraction
        self.base_detach, self.teacher_detach = base_detach, teacher_detach
        self.pixel_contrast = pixel_contrast
        self.contrast_classes = contrast_classes
        self.register_buffer("novel_ids", torch.as_tensor(novel, dtype=torch.int64), persistent=False)
        is_novel = torch.zeros(max(num_classes, ignore_label + 1), dtype=torch.bool)
        is_novel[novel] = True
        self.register_buffer("is_novel_lut", is_novel, persistent=False)

    # ------------------------------------------------------------------ per-layer terms
    def _layer_losses(self, outputs, targets, num_masks, indices=None):
        if indices is None:  # SetCriterion.forward passes the matches of all layers (one host copy)
            indices = self.matcher(outputs, targets)
        losses = super()._layer_losses(outputs, targets, num_masks, indices=indices)
        if self.comp_loss:
            losses.update(self.loss_complementary(outputs, targets, indices))
        return losses

    def loss_complementary(self, outputs, targets, indices):
        """loss_comp of one decoder layer (spec §4.3).

        The bookkeeping (which matched queries are novel, their slot per image) runs on the host from the
        matcher's CPU indices and ``has_mask_host``, so it costs no device sync; the not-base regions are
        computed once per step (cached on the targets) and shared by every layer.
        """
        pred_masks = outputs["pred_masks"]
        device = pred_masks.device
        b_idx, q_idx, rows = [], [], []
        for b, (i, _) in enumerate(host_matched_pairs(targets, indices, with_mask=False)):  # NumPy: no sync
            if len(i):
                q_idx.append(i)
                b_idx.append(np.full(len(i), b))
                rows.append(b)
        if not rows:
            return {"loss_comp": pred_masks.sum() * 0.0}
        counts = [len(q) for q in q_idx]
        slot = torch.from_numpy(np.concatenate([np.arange(n) for n in counts]))  # position of the query in its image
        row = torch.from_numpy(np.repeat(np.arange(len(rows)), counts))
        b_idx, q_idx = torch.from_numpy(np.concatenate(b_idx)).to(device), torch.from_numpy(np.concatenate(q_idx)).to(device)
        h, w = targets[0]["masks"].shape[-2:]
        logits = F.interpolate(pred_masks[b_idx, q_idx][:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        padded = logits.new_full((len(rows), max(counts), h * w), _FILLER)
        padded = padded.index_put((row.to(device), slot.to(device)), logits.flatten(1))
        region = complementary_region_logits(padded, self.ignore_proposal_logit)
        target = self._not_base_regions(targets)[torch.tensor(rows, device=device)].flatten(1)
        return {"loss_comp": complementary_loss(region, target, self.comp_focal_weight, self.comp_dice_weight)}

    @staticmethod
    def _not_base_regions(targets):
        """(B, H, W) float: 1 outside every has-mask target and outside the padding (cached on targets[0])."""
        cached = targets[0].get(_NOT_BASE_KEY)
        if cached is not None:
            return cached
        regions = []
        for t in targets:  # one pass per step, not per layer; masks per image differ in number
            outside = (~t["pad"]).to(torch.float32)
            masks = t["masks"] * t["has_mask"].to(t["masks"].dtype)[:, None, None]
            regions.append(outside * (1.0 - masks.amax(dim=0)) if len(masks) else outside)
        regions = torch.stack(regions)
        targets[0][_NOT_BASE_KEY] = regions
        return regions

    # ------------------------------------------------------------------ cross-image terms
    def _low_res_labels(self, targets, size):
        """(B, h*w) labels, base-region and padding maps at the mask-feature resolution (nearest)."""
        labels = downsample_labels(torch.stack([t["sem_seg_raw"] for t in targets]).long(), size).flatten(1)
        pad = downsample_labels(torch.stack([t["pad"] for t in targets]).long(), size).bool().flatten(1)
        labels = labels.clamp(max=self.is_novel_lut.numel() - 1)
        is_base = (labels != self.ignore_label) & ~self.is_novel_lut[labels]
        return labels, is_base, pad

    def _presence(self, targets, with_mask: bool, device):
        """(B, K) bool: classes of each image's targets that have (``with_mask``) / lack a mask."""
        labels = torch.cat([t["labels"] for t in targets]).to(device)
        has_mask = torch.cat([t["has_mask"] for t in targets]).to(device)
        counts = torch.tensor([len(t["labels"]) for t in targets], device=device)
        image = torch.repeat_interleave(torch.arange(len(targets), device=device), counts)
        sel = has_mask if with_mask else ~has_mask
        pres = torch.zeros(len(targets), self.num_classes, dtype=torch.bool, device=device)
        pres[image[sel], labels[sel]] = True
        return pres

    def cross_image_losses(self, outputs, targets) -> Dict[str, torch.Tensor]:
        """loss_cro_sim and (when enabled) loss_cro_dit of the last layer (spec §4.5, §4.6)."""
        feats = outputs["mask_features"]
        b, c, h, w = feats.shape
        device = feats.device
        if "sem_seg_raw" not in targets[0]:
            raise KeyError("cross-image losses need 'sem_seg_raw' label maps (use a weak-shot mapper)")
        partner = partner_index(b, device)
        labels, is_base, pad = self._low_res_labels(targets, (h, w))
        flat = feats.flatten(2)  # (B, C, P)

        # --- base pixel pairs: common base class as positives, rest of the image as negatives
        base_pres = self._presence(targets, True, device) & ~self.is_novel_lut[: self.num_classes]
        common = base_pres & base_pres[partner]
        has_common = common.any(dim=1)
        choice = torch.multinomial(torch.where(has_common[:, None], common.float(), torch.ones_like(common, dtype=torch.float32)), 1)[:, 0]
        choice = choice[torch.arange(b, device=device) & ~1]  # one class per pair (drawn for its first image)
        positive = torch.where(has_common[:, None], labels == choice[:, None], is_base)
        n_pos = int(round(self.positive_fraction * self.base_points))
        idx = torch.cat([sample_points(positive, n_pos), sample_points(~pad & ~positive, self.base_points - n_pos)], dim=1)
        f = gather_points(flat, idx)
        f = f.detach() if self.base_detach else f
        target, valid = pair_similarity_targets(gather_points(labels, idx), gather_points(is_base, idx), partner)
        w_pos, w_neg = self.balance.update(target) if self.training else self.balance.weights()
        logits = self.simnet(f.float(), f[partner].float())
        losses = {"loss_cro_sim": balanced_pair_loss(logits, target, valid, w_pos, w_neg)}

        if self.distill:
            novel_pres = self._presence(targets, False, device)
            shares_novel = (novel_pres & novel_pres[partner]).any(dim=1)
            idx_n = sample_points(~is_base, self.novel_points)
            fn = gather_points(flat, idx_n)
            if self.teacher_detach:
                with torch.no_grad():
                    teacher = self.simnet(fn.detach().float(), fn[partner].detach().float()).sigmoid()
            else:
                teacher = self.simnet(fn.float(), fn[partner].float()).sigmoid()
            point_masks = gather_points(outputs["pred_masks"].flatten(2), idx_n)  # (B, Kn, Q)
            scores = student_scores(outputs["pred_logits"].float(), point_masks.transpose(1, 2).float(), self.novel_ids, self.distill_to)
            student = student_similarity(scores, partner, self.cross_image_student)
            losses["loss_cro_dit"] = distillation_loss(teacher, student, shares_novel, self.distill_fn)
        return losses

    # ------------------------------------------------------------------ pixel contrast
    def contrast_labels(self, targets) -> torch.Tensor:
        """(B, H, W) int64: the class of every pixel to contrast, -1 elsewhere.

        A pixel is used when its ``sem_seg_raw`` class has a mask target in its image (never a novel class
        with image-level labels only, nor ignore / padding) and, with CLASSES "base", is not a novel class.
        """
        if "sem_seg_raw" not in targets[0]:
            raise KeyError("pixel contrast needs 'sem_seg_raw' label maps (use a weak-shot mapper)")
        raw = torch.stack([t["sem_seg_raw"] for t in targets])
        labelled = self._presence(targets, True, raw.device)  # (B, K)
        if self.contrast_classes == "base":
            labelled = labelled & ~self.is_novel_lut[: self.num_classes]
        in_range = (raw >= 0) & (raw < self.num_classes)
        cls = raw.clamp(0, self.num_classes - 1)
        image = torch.arange(len(targets), device=raw.device)[:, None, None]
        return torch.where(in_range & labelled[image, cls], cls, -1)

    def pixel_contrast_losses(self, outputs, targets) -> Dict[str, torch.Tensor]:
        """loss_pixel_contrast on the last layer's mask features; hard anchors = misclassified by the
        detached semantic prediction of the last layer (at mask-feature resolution)."""
        pred = None
        if self.pixel_contrast.hard_anchors:
            with torch.no_grad():
                pred = semantic_inference(outputs["pred_logits"].detach(), outputs["pred_masks"].detach()).argmax(dim=1)
        loss = self.pixel_contrast(outputs["mask_features"], self.contrast_labels(targets), pred)
        return {"loss_pixel_contrast": loss}

    def forward(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        losses = super().forward(outputs, targets)
        if self.simnet is not None:
            losses.update(self.cross_image_losses(outputs, targets))
        if self.pixel_contrast is not None:
            losses.update(self.pixel_contrast_losses(outputs, targets))
        return losses
