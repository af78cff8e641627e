"""Pixel classification layer of the mask-classification model (spec §9.2 "B2"), as pure tensor functions.

The query decoder's final layer gives class logits z_q (B, Q, K+1) and mask embeddings e_q (B, Q, C). A
classifier from CLASSIFIER_REGISTRY (e.g. SSA) then classifies every pixel of the pixel decoder's
``mask_features`` against per-image class prototypes pooled from the queries:

    p_q(k) = softmax(z_q)_k (k < K, the no-object column dropped),
    alpha_qk = p_q(k) / sum_q' p_q'(k),       W_img[k] = sum_q alpha_qk e_q.

So W_img[k] . E(x) = sum_q alpha_qk m_q(x) is the alpha-weighted mean of the query mask logits, and a
class that no query predicts confidently still gets a prototype (its relative probabilities). The final
semantic map is MaskFormer's, the pixel classifier's, or their fusion (:func:`fuse_semantic_maps`).

Weak-shot training: the classifier (and SSA's teacher) sees base labels only, novel pixels are ignore. The
only positive signal for novel classes is :func:`tagged_region_loss`, the pixel-level counterpart of
SimFormer's complementary loss: a pixel outside every base mask (and outside the padding) of an image
tagged with novel classes should belong to one of those tagged classes.
"""
from typing import Dict, List

import torch
from torch.nn import functional as F

__all__ = [
    "SEMANTIC_MAPS",
    "PIXEL_PROTOTYPES",
    "query_class_prototypes",
    "label_map_from_targets",
    "novel_tag_region",
    "tagged_region_loss",
    "pixel_class_scores",
    "fuse_semantic_maps",
]

# MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP
SEMANTIC_MAPS = ("maskformer", "pixel", "fusion")
# MODEL.MASK_FORMER.PIXEL_CLASSIFIER.PROTOTYPES: per-image prototypes from the queries, or the classifier's own weights
PIXEL_PROTOTYPES = ("queries", "learned")


def query_class_prototypes(class_logits: torch.Tensor, mask_embed: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image class prototypes: the queries' mask embeddings averaged with weights p_q(k) / sum_q p_q(k).

    Args:
        class_logits: (B, Q, K+1) query class logits (last column = no object).
        mask_embed: (B, Q, C) query mask embeddings.
    Returns:
        (B, K, C) prototypes W_img, in fp32.
    """
    prob = F.softmax(class_logits.float(), dim=-1)[..., :-1]  # B, Q, K
    alpha = prob / (prob.sum(1, keepdim=True) + eps)
    return torch.einsum("bqk,bqc->bkc", alpha, mask_embed.float())


def label_map_from_targets(targets: List[Dict], ignore_value: int) -> torch.Tensor:
    """Dense label maps from the per-image mask targets of the set criterion.

    Pixels covered by a target with a mask get its class; all others (targets without a mask, i.e.
    weak-shot novel classes with image-level labels only, unlabelled pixels, padding) are ``ignore_value``.
    The only loop is over images (their target counts differ).

    Args:
        targets: per image ``labels`` (T,) int64, ``masks`` (T, H, W) at the padded input size (shared by
            the batch), optional ``has_mask`` (T,) bool (default all True).
    Returns:
        (B, H, W) int64.
    """
    maps = []
    for t in targets:
        masks = t["masks"] > 0.5
        if "has_mask" in t:
            masks = masks & t["has_mask"][:, None, None]
        # a last all-covering "ignore" target: argmax (first maximum) picks the first target covering each pixel
        masks = torch.cat([masks, masks.new_ones((1,) + masks.shape[1:])])
        labels = torch.cat([t["labels"].long(), t["labels"].new_full((1,), ignore_value, dtype=torch.int64)])
        maps.append(labels[masks.to(torch.uint8).argmax(0)])
    return torch.stack(maps)


def novel_tag_region(targets: List[Dict], num_classes: int):
    """Image-level novel labels and the region they may occupy, from the set criterion's targets.

    Args:
        targets: per image ``labels`` (T,), ``masks`` (T, H, W), ``has_mask`` (T,) bool (targets without a
            mask are the image-level novel labels) and ``pad`` (H, W) bool (True on padding).
    Returns:
        tags: (B, K) bool, the classes of the image's targets without a mask;
        region: (B, H, W) bool, outside every has-mask target and outside the padding (the not-base region
            of SimFormer's complementary loss).
    """
    missing = [i for i, t in enumerate(targets) if "pad" not in t or "has_mask" not in t]
    if missing:
        raise KeyError("the novel pixel loss (MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NOVEL_WEIGHT > 0) needs 'has_mask' and 'pad' in the targets: use the SimFormer meta-architecture")
    tags = torch.zeros(len(targets), num_classes, dtype=torch.bool, device=targets[0]["masks"].device)
    regions = []
    for i, t in enumerate(targets):
        tags[i, t["labels"][~t["has_mask"]]] = True
        base = ((t["masks"] > 0.5) & t["has_mask"][:, None, None]).any(0)
        regions.append(~base & ~t["pad"])
    return tags, torch.stack(regions)


def tagged_region_loss(logits: torch.Tensor, tags: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Partial-label CE: mean over the region pixels of tagged images of -log sum_{k in tags} softmax(logits)_k.

    With one tag this is the CE to that class; with several, the classifier only has to put the pixel's
    mass on the tagged set, and its prototypes (pooled from the queries of each class) tell them apart.

    Args:
        logits: (B, K, H, W); tags: (B, K) bool; region: (B, H, W) bool.
    Returns:
        scalar; 0 when no tagged image has a region pixel.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    # finite fill (not -inf): an image without tags must not give NaN gradients through logsumexp
    tagged = torch.logsumexp(log_p.masked_fill(~tags[:, :, None, None], -1e4), dim=1)  # B, H, W
    valid = region & tags.any(1)[:, None, None]
    return -(tagged * valid).sum() / valid.sum().clamp(min=1)


def pixel_class_scores(pixel_logits: torch.Tensor, size) -> torch.Tensor:
    """Pixel classifier logits (B, K, h, w) -> class probabilities (B, K, H, W) at ``size``: bilinear
    upsampling (align_corners=False, as in training) then softmax over the K classes."""
    logits = F.interpolate(pixel_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return F.softmax(logits, dim=1)


def fuse_semantic_maps(maskformer_scores: torch.Tensor, pixel_scores: torch.Tensor, weight: float, eps: float = 1e-6) -> torch.Tensor:
    """Weighted geometric mean of two (B, K, H, W) per-class maps: S_mf^(1 - weight) * S_pix^weight.

    Both maps are per-class probabilities in [0, 1] (MaskFormer's is not normalised over classes); the
    geometric mean keeps their range, and its argmax is unchanged by any per-pixel rescaling of either
    map, so MaskFormer's overall confidence per pixel does not decide against the pixel classifier.
    ``weight`` 0 gives MaskFormer's map, 1 the pixel classifier's (up to ``eps``).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"MODEL.MASK_FORMER.PIXEL_CLASSIFIER.FUSION_WEIGHT must be in [0, 1], got {weight}")
    log = (1 - weight) * torch.log(maskformer_scores.float().clamp(min=eps)) + weight * torch.log(pixel_scores.float().clamp(min=eps))
    return log.exp()
