"""SimFormer's weak-shot loss terms as pure tensor functions (spec §4.3-§4.6).

Shapes: B images, P pixels (flattened H x W), Q queries, K sampled points, C channels, N novel classes.
Pair losses take the images of a batch in partner order [A1, B1, A2, B2, ...]: the partner of image b is
``b ^ 1`` (:func:`partner_index`).
"""
import math

import torch
from torch.nn import functional as F

from .mask import dice_loss, sigmoid_focal_loss

__all__ = [
    "complementary_region_logits",
    "complementary_loss",
    "partner_index",
    "sample_points",
    "gather_points",
    "pair_similarity_targets",
    "balanced_pair_loss",
    "student_scores",
    "student_similarity",
    "distillation_loss",
    "parse_distill_func",
    "DISTILL_FUNCS",
    "DISTILL_TARGETS",
]

DISTILL_TARGETS = ("NovelScore", "FullScore", "FullLogit", "FullLogitC")


# ------------------------------------------------------------------------------------ complementary loss
def complementary_region_logits(novel_logits: torch.Tensor, floor: float) -> torch.Tensor:
    """Predicted "not-base" region of each image as a logit: r(x) = max(floor, max_q m_q(x)).

    novel_logits: (B, M, P) mask logits of the queries matched to novel targets, padded with any value
    <= floor where an image has fewer than M of them -> (B, P). Pixels where every novel logit is below
    ``floor`` take the constant and pass no gradient.
    """
    floor_map = novel_logits.new_full(novel_logits.shape[::2], floor)
    if novel_logits.shape[1] == 0:
        return floor_map
    return torch.maximum(novel_logits.amax(dim=1), floor_map)


def complementary_loss(region_logits, target, focal_weight: float = 20.0, dice_weight: float = 1.0):
    """Spec §4.3: sum_b [focal_weight * focal(r_b, G_b) + dice_weight * dice(r_b, G_b)] / (B + 1e-5).

    region_logits: (B, P) from :func:`complementary_region_logits`; target: (B, P) G = not base and not
    padding, in {0, 1} (ignore pixels count as "not base"). Only images with at least one novel target
    should be passed. Returns a scalar (0 with a graph when B = 0).
    """
    if region_logits.shape[0] == 0:
        return region_logits.sum() * 0.0
    target = target.to(region_logits.dtype)
    per_image = focal_weight * sigmoid_focal_loss(region_logits, target, binary_targets=True) + dice_weight * dice_loss(region_logits, target)
    return per_image.sum() / (region_logits.shape[0] + 1e-5)


# ------------------------------------------------------------------------------------ pixel pairs
def partner_index(num_images: int, device=None) -> torch.Tensor:
    """Partner of every image in a batch ordered [A1, B1, A2, B2, ...]: (B,) int64, ``b ^ 1``."""
    if num_images % 2:
        raise ValueError(f"pair losses need images in pairs (A1, B1, A2, B2, ...), got a batch of {num_images}")
    return torch.arange(num_images, device=device) ^ 1


def sample_points(region: torch.Tensor, num: int, generator=None) -> torch.Tensor:
    """Uniformly random pixels inside a region, topped up from outside it when it is too small.

    region: (B, P) bool -> (B, num) int64 flat indices (distinct within an image). Implemented as the
    top-``num`` of (region + U(0, 0.1) noise), as in the reference code.
    """
    if num > region.shape[1]:
        raise ValueError(f"sample_points: {num} points asked from images of {region.shape[1]} pixels")
    noise = torch.rand(region.shape, generator=generator, device=region.device if generator is None else generator.device)
    score = region.to(torch.float32) + 0.1 * noise.to(region.device)
    return score.topk(num, dim=1, sorted=False).indices


def gather_points(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, C, P) or (B, P), index (B, K) -> (B, K, C) or (B, K): values at the sampled pixels
    (equal to grid_sample at pixel centres with align_corners=True)."""
    if values.dim() == 2:
        return values.gather(1, index)
    return values.gather(2, index[:, None, :].expand(-1, values.shape[1], -1)).transpose(1, 2)


def pair_similarity_targets(labels: torch.Tensor, is_base: torch.Tensor, partner: torch.Tensor):
    """Targets and validity of the pixel pairs (i in image b, j in its partner).

    labels: (B, K) int64 labels at the sampled points; is_base: (B, K) bool (point in the base region);
    partner: (B,) -> target g (B, K, K) float = [l_i == l'_j], valid (B, K, K) bool = base(i) OR base(j).
    """
    target = (labels[:, :, None] == labels[partner][:, None, :]).to(torch.float32)
    valid = is_base[:, :, None] | is_base[partner][:, None, :]
    return target, valid


def balanced_pair_loss(logits, target, valid, pos_weight: float, neg_weight: float):
    """sum V * w(g) * BCE(sigmoid(logits), g) / max(sum V, 1e-5), with w(1) = pos_weight, w(0) = neg_weight.

    logits (B, K, K) of "similar" (SimNet's l1 - l0), target and valid as in :func:`pair_similarity_targets`.
    """
    weight = torch.where(target > 0.5, pos_weight, neg_weight).to(logits.dtype) * valid.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (weight * bce).sum() / weight.new_tensor(float(valid.sum())).clamp(min=1e-5)


# ------------------------------------------------------------------------------------ distillation
def student_scores(class_logits, point_mask_logits, novel_ids, mode: str = "NovelScore"):
    """Semantic scores of the sampled points, spec §4.6 step 3.

    class_logits (B, Q, K+1), point_mask_logits (B, Q, Kp) (mask logits gathered at the points),
    novel_ids (N,) int64 -> (B, Kp, N) for NovelScore, (B, Kp, K) otherwise:
      NovelScore: sum_q softmax(z_q)[novel] * sigmoid(m_q);  FullScore: the same over the K real classes;
      FullLogit:  sum_q z_q[:K] * sigmoid(m_q);              FullLogitC: with ReLU(z_q[:K]).
    """
    masks = point_mask_logits.sigmoid()
    if mode == "NovelScore":
        weights = class_logits.softmax(-1)[..., novel_ids]
    elif mode == "FullScore":
        weights = class_logits.softmax(-1)[..., :-1]
    elif mode == "FullLogit":
        weights = class_logits[..., :-1]
    elif mode == "FullLogitC":
        weights = class_logits[..., :-1].relu()
    else:
        raise ValueError(f"DISTILL_TO must be one of {DISTILL_TARGETS}, got {mode!r}")
    return torch.einsum("bqc,bqk->bkc", weights, masks)


def student_similarity(scores: torch.Tensor, partner: torch.Tensor, cross_image: bool = True) -> torch.Tensor:
    """ReLU(cos(d_i, d_j)) of point scores (B, K, C) -> (B, K, K).

    cross_image=True: j runs over the partner image's points (the paper); False: over the same image's
    points (the released code)."""
    unit = F.normalize(scores, dim=-1, eps=1e-8)
    other = unit[partner] if cross_image else unit
    return torch.einsum("bic,bjc->bij", unit, other).relu()


def _ce(teacher, student):
    t = teacher.clamp(0.01, 0.99)
    s = student.clamp(0.01, 0.99)
    return -(t * s.log() + (1 - t) * (1 - s).log())


def _cce(teacher, student):
    return -(teacher - 0.5).relu() * torch.log1p(student) - (0.5 - teacher).relu() * torch.log(2 - student)


def parse_distill_func(name: str):
    """``DISTILL_FUNC`` -> elementwise loss(teacher, student): "ce", "cce" or "b<theta>" (e.g. "b0.5")."""
    if name == "ce":
        return _ce
    if name == "cce":
        return _cce
    if name.startswith("b"):
        try:
            theta = float(name[1:])
        except ValueError:
            theta = math.nan
        if math.isfinite(theta):
            return lambda teacher, student: -(teacher - theta) * student
    raise ValueError(f"DISTILL_FUNC must be 'ce', 'cce' or 'b<theta>' (e.g. 'b0.5'), got {name!r}")


DISTILL_FUNCS = ("ce", "cce", "b<theta>")


def distillation_loss(teacher, student, pair_weight, func="ce"):
    """Mean over the entries of the pairs that share a novel class.

    teacher, student: (B, K, K) similarities in [0, 1]; pair_weight: (B,) bool, image b's pair shares at
    least one novel class -> scalar: sum_b w_b * mean_ij loss / max(sum_b w_b, 1) (0 when none share).
    """
    loss_fn = parse_distill_func(func) if isinstance(func, str) else func
    per_image = loss_fn(teacher.to(student.dtype), student).flatten(1).mean(dim=1)
    w = pair_weight.to(per_image.dtype)
    return (per_image * w).sum() / w.sum().clamp(min=1.0)
