"""``build_criterion(cfg)``: the set criterion with the weak-shot loss terms the config turns on, and the
weight of every loss name it returns (deep-supervision suffixes expanded here, once).

Terms (:mod:`.loss_terms`), in the order they run: the complementary loss (``MODEL.SIMFORMER.COMP_LOSS_WEIGHT``
!= 0, every decoder layer), the cross-image similarity losses (``CROSS_IMG_SIM.BASE_WEIGHT`` != 0; image
pairs), the pixel contrast (``PIXEL_CONTRAST.WEIGHT`` != 0). A term whose weights are all 0 is not built.
"""
from typing import Dict, List, Tuple

from torch import nn

from .criterion import SetCriterion, point_sampling_kwargs
from .loss_terms import ComplementaryLoss, CrossImageSimilarityLoss, PixelContrastLoss
from .matcher import HungarianMatcher

__all__ = ["build_criterion", "weakshot_terms", "LEGACY_STATE_PREFIXES", "STUDENT_PAIRS"]

STUDENT_PAIRS = ("cross", "same")

# state-dict prefixes of checkpoints written before the terms owned their modules -> today's
LEGACY_STATE_PREFIXES = {
    "criterion.simnet.": "criterion.terms.cross_image.simnet.",
    "criterion.balance.": "criterion.terms.cross_image.balance.",
    "criterion.pixel_contrast.": "criterion.terms.pixel_contrast.contrast.",
}


def weakshot_terms(cfg) -> List[nn.Module]:
    """The weak-shot loss terms of ``MODEL.SIMFORMER`` (module doc), checked against the data settings."""
    sf = cfg.MODEL.SIMFORMER
    cis = sf.CROSS_IMG_SIM
    if cis.STUDENT_PAIRS not in STUDENT_PAIRS:
        raise ValueError(f"MODEL.SIMFORMER.CROSS_IMG_SIM.STUDENT_PAIRS must be one of {STUDENT_PAIRS}, got {cis.STUDENT_PAIRS!r}")
    if cis.DISTILL_WEIGHT != 0 and cis.BASE_WEIGHT == 0:
        raise ValueError("MODEL.SIMFORMER.CROSS_IMG_SIM.DISTILL_WEIGHT > 0 needs SimNet, i.e. CROSS_IMG_SIM.BASE_WEIGHT > 0")
    if cis.BASE_WEIGHT != 0 and cfg.INPUT.DATASET_MAPPER_NAME != "PairDatasetMapper":
        raise ValueError(
            "MODEL.SIMFORMER.CROSS_IMG_SIM.BASE_WEIGHT > 0 trains on image pairs: set INPUT.DATASET_MAPPER_NAME "
            f"'PairDatasetMapper' (got {cfg.INPUT.DATASET_MAPPER_NAME!r})"
        )
    terms = []
    if sf.COMP_LOSS_WEIGHT != 0:
        terms.append(ComplementaryLoss(cfg))
    if cis.BASE_WEIGHT != 0:
        terms.append(CrossImageSimilarityLoss(cfg))
    if sf.PIXEL_CONTRAST.WEIGHT != 0:
        terms.append(PixelContrastLoss(cfg))
    return terms


def build_criterion(cfg, weak_shot: bool = False) -> Tuple[SetCriterion, Dict[str, float]]:
    """(criterion, weight_dict): MaskFormer's set criterion (``MODEL.MASK_FORMER``) plus, with ``weak_shot``
    (the SimFormer meta-architecture), :func:`weakshot_terms`; the weights of every name the criterion
    returns, ``_<i>`` copies for the intermediate layers when ``DEEP_SUPERVISION``."""
    mf = cfg.MODEL.MASK_FORMER
    matcher = HungarianMatcher(cost_class=mf.COST_CLASS, cost_focal=mf.COST_FOCAL, cost_dice=mf.COST_DICE, cost_class_no_mask=mf.COST_CLASS_NO_MASK, num_points=mf.TRAIN_NUM_POINTS, point_sampling=mf.MATCHER_POINT_SAMPLING)
    terms = weakshot_terms(cfg) if weak_shot else []
    criterion = SetCriterion(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, matcher, eos_coef=mf.NO_OBJECT_WEIGHT, **point_sampling_kwargs(cfg), terms=terms)
    layer = {"loss_ce": mf.CLASS_WEIGHT, "loss_focal": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
    final: Dict[str, float] = {}
    for term in terms:
        (layer if term.per_layer else final).update(type(term).weights(cfg))
    weights = dict(layer)
    if mf.DEEP_SUPERVISION:
        weights.update({f"{k}_{i}": v for i in range(mf.DEC_LAYERS - 1) for k, v in layer.items()})
    weights.update(final)
    return criterion, weights
