"""SimFormer's weak-shot loss terms, each a small module that :class:`~.criterion.SetCriterion` composes
(spec §4; assembled from the config by :func:`~.build_criterion.build_criterion`).

A term has a ``name``, ``per_layer`` and ``loss_names`` (its unweighted outputs):

  per layer (every decoder layer; suffix ``_<i>`` for the intermediate ones), called with the layer's
  outputs, the targets and the layer's matches:
    :class:`ComplementaryLoss`  loss_comp -- the union of the novel-matched masks (floored at the
                                ignore-proposal logit) vs. the not-base, not-padding region;
  last layer only, called with the final outputs and the targets:
    :class:`CrossImageSimilarityLoss`  loss_cro_sim -- SimNet (owned here, with its running pair balance)
                                trained on base pixel pairs across the two images of a pair [A1, B1, ...];
                                loss_cro_dit -- SimNet's similarities of novel / unlabelled pixel pairs
                                distilled into the novel semantic masks;
    :class:`PixelContrastLoss`  loss_pixel_contrast -- cross-image pixel contrast on the mask features of
                                labelled pixels (the projection head and memory are owned here).

Targets (per image) in addition to SetCriterion's: ``sem_seg_raw`` (H, W) int64 label map that may hold
novel ids (ignore elsewhere; padding is ignore) and ``pad`` (H, W) bool (SimFormer.prepare_targets).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from torch import nn
from torch.nn import functional as F

from ssa_adapter.losses import downsample_labels

from ..inference import semantic_inference
from .criterion import host_matched_pairs
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
from .pixel_contrast_head import PixelContrast, build_pixel_contrast
from .simnet import RunningPairBalance, SimNet

__all__ = ["ComplementaryLoss", "CrossImageSimilarityLoss", "PixelContrastLoss", "CONTRAST_CLASSES", "class_presence", "novel_lookup", "weakshot_metadata"]

# pixels contrasted: "base" = base classes with a mask target; "labelled" = every class with a mask target
# (base + pseudo-labelled novel classes when retraining)
CONTRAST_CLASSES = ("base", "labelled")

_NOT_BASE_KEY = "_not_base_regions"  # per-step cache of the complementary-loss target on targets[0]
_FILLER = -1.0e4  # mask logit of "no query" slots in the padded novel-mask tensor (below any floor)


def novel_lookup(novel_class_ids: Sequence[int], num_classes: int, ignore_label: int) -> torch.Tensor:
    """(max(K, ignore + 1),) bool: True at the novel class ids (checked to lie in [0, K))."""
    novel = sorted(int(c) for c in novel_class_ids)
    if any(not 0 <= c < num_classes for c in novel):
        raise ValueError(f"novel class ids {novel} outside [0, {num_classes})")
    lut = torch.zeros(max(num_classes, ignore_label + 1), dtype=torch.bool)
    lut[novel] = True
    return lut


def class_presence(targets: List[Dict], num_classes: int, with_mask: bool, device) -> torch.Tensor:
    """(B, K) bool: the classes of each image's targets that have (``with_mask``) / lack a mask."""
    labels = torch.cat([t["labels"] for t in targets]).to(device)
    has_mask = torch.cat([t["has_mask"] for t in targets]).to(device)
    counts = torch.tensor([len(t["labels"]) for t in targets], device=device)
    image = torch.repeat_interleave(torch.arange(len(targets), device=device), counts)
    sel = has_mask if with_mask else ~has_mask
    pres = torch.zeros(len(targets), num_classes, dtype=torch.bool, device=device)
    pres[image[sel], labels[sel]] = True
    return pres


def weakshot_metadata(cfg):
    """(novel class ids, ignore label) of the training data (``DATASETS.TRAIN`` metadata; every training
    dataset must have the same novel classes)."""
    ids = {tuple(sorted(MetadataCatalog.get(n).get("novel_class_ids", None) or ())) for n in cfg.DATASETS.TRAIN}
    if len(ids) > 1:
        raise ValueError(f"SimFormer: the datasets of DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} have different novel classes")
    ignore = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", 255) if cfg.DATASETS.TRAIN else 255
    return (list(ids.pop()) if ids else []), ignore


def _check_novel(novel_class_ids, what: str):
    if not list(novel_class_ids):
        raise ValueError(f"the {what} needs novel classes: the training dataset's metadata has no novel_class_ids")


class ComplementaryLoss(nn.Module):
    """loss_comp of one decoder layer (spec §4.3); ``focal_weight`` / ``dice_weight`` weigh its two parts
    (MaskFormer's mask-loss weights)."""

    name = "comp"
    per_layer = True
    loss_names = ("loss_comp",)

    @configurable
    def __init__(self, ignore_proposal_logit: float = -2.9444, focal_weight: float = 20.0, dice_weight: float = 1.0):
        super().__init__()
        self.ignore_proposal_logit = float(ignore_proposal_logit)
        self.focal_weight, self.dice_weight = focal_weight, dice_weight

    @classmethod
    def from_config(cls, cfg):
        _check_novel(weakshot_metadata(cfg)[0], "complementary loss")
        mf = cfg.MODEL.MASK_FORMER
        return {"ignore_proposal_logit": cfg.MODEL.SIMFORMER.IGNORE_PROPOSAL_LOGIT, "focal_weight": mf.MASK_WEIGHT, "dice_weight": mf.DICE_WEIGHT}

    @staticmethod
    def weights(cfg) -> Dict[str, float]:
        return {"loss_comp": cfg.MODEL.SIMFORMER.COMP_LOSS_WEIGHT}

    def forward(self, outputs: Dict, targets: List[Dict], indices) -> Dict[str, torch.Tensor]:
        """The bookkeeping (which matched queries are novel, their slot per image) runs on the host from the
        matcher's CPU indices and ``has_mask_host``, so it costs no device sync; the not-base regions are
        computed once per step (cached on the targets) and shared by every layer."""
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
        target = self.not_base_regions(targets)[torch.tensor(rows, device=device)].flatten(1)
        return {"loss_comp": complementary_loss(region, target, self.focal_weight, self.dice_weight)}

    @staticmethod
    def not_base_regions(targets: List[Dict]) -> torch.Tensor:
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


class CrossImageSimilarityLoss(nn.Module):
    """loss_cro_sim and (``distill``) loss_cro_dit of the last layer (spec §4.5, §4.6), for batches of image
    pairs [A1, B1, A2, B2, ...]. Owns SimNet and its running pair balance (state-dict keys ``simnet.*``,
    ``balance.*``)."""

    name = "cross_image"
    per_layer = False

    @configurable
    def __init__(
        self,
        simnet: SimNet,
        num_classes: int,
        novel_class_ids: Sequence[int],
        *,
        ignore_label: int = 255,
        distill: bool = False,
        distill_func: str = "ce",
        distill_to: str = "NovelScore",
        cross_image_student: bool = True,
        base_points: int = 100,
        novel_points: int = 100,
        positive_fraction: float = 0.8,
        base_detach: bool = True,
        teacher_detach: bool = True,
        balance: RunningPairBalance = None,
    ):
        super().__init__()
        _check_novel(novel_class_ids, "cross-image similarity loss")
        if distill_to not in DISTILL_TARGETS:
            raise ValueError(f"MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_TO must be one of {DISTILL_TARGETS}, got {distill_to!r}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"MODEL.SIMFORMER.CROSS_IMG_SIM.POSITIVE_FRACTION must be in [0, 1], got {positive_fraction}")
        self.simnet = simnet
        self.balance = balance if balance is not None else RunningPairBalance()
        self.num_classes, self.ignore_label = num_classes, ignore_label
        self.distill = distill
        self.distill_fn = parse_distill_func(distill_func)
        self.distill_to = distill_to
        self.cross_image_student = cross_image_student
        self.base_points, self.novel_points = base_points, novel_points
        self.positive_fraction = positive_fraction
        self.base_detach, self.teacher_detach = base_detach, teacher_detach
        self.register_buffer("novel_ids", torch.as_tensor(sorted(int(c) for c in novel_class_ids), dtype=torch.int64), persistent=False)
        self.register_buffer("is_novel_lut", novel_lookup(novel_class_ids, num_classes, ignore_label), persistent=False)
        self.loss_names = ("loss_cro_sim", "loss_cro_dit") if distill else ("loss_cro_sim",)

    @classmethod
    def from_config(cls, cfg):
        cis = cfg.MODEL.SIMFORMER.CROSS_IMG_SIM
        novel, ignore = weakshot_metadata(cfg)
        return {
            "simnet": SimNet(cfg.MODEL.SEM_SEG_HEAD.MASK_DIM, cis.HIDDEN_DIM, cis.LAYER_NUM, cis.BN),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "novel_class_ids": novel,
            "ignore_label": ignore,
            "distill": cis.DISTILL_WEIGHT != 0,
            "distill_func": cis.DISTILL_FUNC,
            "distill_to": cis.DISTILL_TO,
            "cross_image_student": cis.STUDENT_PAIRS == "cross",
            "base_points": cis.BASE_POINT_NUM,
            "novel_points": cis.NOVEL_POINT_NUM,
            "positive_fraction": cis.POSITIVE_FRACTION,
            "base_detach": cis.BASE_DETACH,
            "teacher_detach": cis.TEACH_DETACH,
            "balance": RunningPairBalance(cis.BALANCE_WINDOW, cis.BALANCE_STRIDE),
        }

    @staticmethod
    def weights(cfg) -> Dict[str, float]:
        cis = cfg.MODEL.SIMFORMER.CROSS_IMG_SIM
        return {"loss_cro_sim": cis.BASE_WEIGHT, **({"loss_cro_dit": cis.DISTILL_WEIGHT} if cis.DISTILL_WEIGHT != 0 else {})}

    def _low_res_labels(self, targets, size):
        """(B, h*w) labels, base-region and padding maps at the mask-feature resolution (nearest)."""
        labels = downsample_labels(torch.stack([t["sem_seg_raw"] for t in targets]).long(), size).flatten(1)
        pad = downsample_labels(torch.stack([t["pad"] for t in targets]).long(), size).bool().flatten(1)
        labels = labels.clamp(max=self.is_novel_lut.numel() - 1)
        is_base = (labels != self.ignore_label) & ~self.is_novel_lut[labels]
        return labels, is_base, pad

    def forward(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        feats = outputs["mask_features"]
        b, c, h, w = feats.shape
        device = feats.device
        if "sem_seg_raw" not in targets[0]:
            raise KeyError("cross-image losses need 'sem_seg_raw' label maps (use a weak-shot mapper)")
        partner = partner_index(b, device)
        labels, is_base, pad = self._low_res_labels(targets, (h, w))
        flat = feats.flatten(2)  # (B, C, P)

        # --- base pixel pairs: common base class as positives, rest of the image as negatives
        base_pres = class_presence(targets, self.num_classes, True, device) & ~self.is_novel_lut[: self.num_classes]
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
            novel_pres = class_presence(targets, self.num_classes, False, device)
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


class PixelContrastLoss(nn.Module):
    """loss_pixel_contrast on the last layer's mask features (related_methods §D.3); hard anchors =
    pixels misclassified by the detached semantic prediction of the last layer (at mask-feature
    resolution). Owns the projection head / memory (:class:`PixelContrast`, state-dict keys ``contrast.*``)."""

    name = "pixel_contrast"
    per_layer = False
    loss_names = ("loss_pixel_contrast",)

    @configurable
    def __init__(self, contrast: PixelContrast, num_classes: int, novel_class_ids: Sequence[int] = (), *, ignore_label: int = 255, classes: str = "base"):
        super().__init__()
        if classes not in CONTRAST_CLASSES:
            raise ValueError(f"MODEL.SIMFORMER.PIXEL_CONTRAST.CLASSES must be one of {CONTRAST_CLASSES}, got {classes!r}")
        self.contrast = contrast
        self.num_classes = num_classes
        self.classes = classes
        self.register_buffer("is_novel_lut", novel_lookup(novel_class_ids, num_classes, ignore_label), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        novel, ignore = weakshot_metadata(cfg)
        return {"contrast": build_pixel_contrast(cfg), "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, "novel_class_ids": novel,
                "ignore_label": ignore, "classes": cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.CLASSES}  # fmt: skip

    @staticmethod
    def weights(cfg) -> Dict[str, float]:
        return {"loss_pixel_contrast": cfg.MODEL.SIMFORMER.PIXEL_CONTRAST.WEIGHT}

    def contrast_labels(self, targets: List[Dict]) -> torch.Tensor:
        """(B, H, W) int64: the class of every pixel to contrast, -1 elsewhere.

        A pixel is used when its ``sem_seg_raw`` class has a mask target in its image (never a novel class
        with image-level labels only, nor ignore / padding) and, with classes "base", is not a novel class.
        """
        if "sem_seg_raw" not in targets[0]:
            raise KeyError("pixel contrast needs 'sem_seg_raw' label maps (use a weak-shot mapper)")
        raw = torch.stack([t["sem_seg_raw"] for t in targets])
        labelled = class_presence(targets, self.num_classes, True, raw.device)  # (B, K)
        if self.classes == "base":
            labelled = labelled & ~self.is_novel_lut[: self.num_classes]
        in_range = (raw >= 0) & (raw < self.num_classes)
        cls = raw.clamp(0, self.num_classes - 1)
        image = torch.arange(len(targets), device=raw.device)[:, None, None]
        return torch.where(in_range & labelled[image, cls], cls, -1)

    def forward(self, outputs: Dict, targets: List[Dict]) -> Dict[str, torch.Tensor]:
        pred = None
        if self.contrast.hard_anchors:
            with torch.no_grad():
                pred = semantic_inference(outputs["pred_logits"].detach(), outputs["pred_masks"].detach()).argmax(dim=1)
        return {"loss_pixel_contrast": self.contrast(outputs["mask_features"], self.contrast_labels(targets), pred)}
