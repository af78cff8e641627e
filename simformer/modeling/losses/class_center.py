"""Class-centre losses of the CCS classifier, as pure tensor functions (spec related_methods.md §A.3 step 4).

The paper (Wu et al., arXiv 2301.04870) names an intra-class loss on the pixel-to-centre similarity and an
inter-class loss on the centre-to-centre similarity; only its abstract is available, so every formula here
is [our design] following the spec's proposal (§A.3, §A.4).

Shapes: B images, K classes, C channels, h x w feature resolution. Label maps are int64 with
``ignore_value`` for unlabelled pixels (in weak-shot training novel pixels are ignore, so a novel class is
never "present" from labels alone). No Python loop over images, classes or pixels; no host sync; every
function returns a scalar that is 0 (not NaN) when there is nothing to average.
"""
import torch
import torch.nn.functional as F

from ssa_adapter.losses import present_classes  # one home: the pure-tensor losses of ssa_adapter

__all__ = ["present_classes", "intra_class_loss", "inter_class_loss"]


def intra_class_loss(similarity: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, ignore_value: int = 255) -> torch.Tensor:
    """Pull each labelled pixel towards its own (scene-adapted) class centre.

    ``mean_{p: y_p != ignore} max(0, margin - cos(x_p, c_{b, y_p}))``; with ``margin = 1`` it is ``1 - cos``.
    Only classes with labelled pixels in an image contribute, by construction.

    Args:
        similarity: (B, K, h, w) pixel-to-centre cosine similarities.
        labels: (B, h, w) int64 at the same resolution as ``similarity``.
        margin: target cosine; pixels already closer than it cost nothing.
        ignore_value: label of unlabelled pixels.
    Returns:
        scalar tensor.
    """
    valid = labels != ignore_value
    own = similarity.gather(1, labels.masked_fill(~valid, 0)[:, None])[:, 0]  # (B, h, w)
    return ((margin - own).clamp(min=0) * valid).sum() / valid.sum().clamp(min=1)


def inter_class_loss(centres: torch.Tensor, classes: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Push apart the centres of classes that occur together in an image.

    With ``G[b] = Ĉ_b Ĉ_bᵀ`` the (K, K) centre-to-centre cosine similarities and ``P_b`` the selected classes
    of image b: ``mean over images with a pair of mean_{k != l in P_b} max(0, G[b, k, l] - margin)``. With the
    default margin 0 the centres are asked to be at most orthogonal (anti-parallel ones cost nothing). Images
    with fewer than two selected classes have no pair and are left out of the mean.

    Args:
        centres: (B, K, C) class centres (any norm; zero vectors have similarity 0).
        classes: (B, K) bool, the classes whose pairs count (e.g. :func:`present_classes`, or all True).
        margin: allowed cosine similarity between two centres.
    Returns:
        scalar tensor.
    """
    unit = F.normalize(centres, dim=-1, eps=1e-6)
    gram = unit @ unit.transpose(1, 2)  # (B, K, K)
    eye = torch.eye(classes.shape[1], dtype=torch.bool, device=classes.device)
    pairs = classes[:, :, None] & classes[:, None, :] & ~eye
    count = pairs.sum((1, 2))
    per_image = ((gram - margin).clamp(min=0) * pairs).sum((1, 2)) / count.clamp(min=1)
    return per_image.sum() / (count > 0).sum().clamp(min=1)
