"""Cross-image pixel contrast (Wang et al., ICCV 2021) as pure tensor functions (spec related_methods §C).

Shapes: B images, P pixels per image (flattened h x w), D embedding channels, K classes, N anchors,
M contrast samples. Everything is vectorised: groups of pixels are handled with scatter / sort /
searchsorted, never with Python loops over pixels, classes or images.

Differences from the official code (spec §C.9), all deliberate:
  * anchors without any positive are left out of the mean (the official loss divides 0 by 0);
  * the self-similarity mask is applied only when the contrast set is the anchor set (Q3);
  * invalid contrast entries (unfilled memory slots) are masked out, never used as zero vectors (Q2);
  * the ring buffer writes at ``(ptr + rank) mod T`` and advances the pointer by the number written (Q1);
  * a sampling that yields no anchor gives a zero loss, not a crash (Q14).
"""
import torch
from torch.nn import functional as F

__all__ = [
    "group_ranks",
    "sample_anchors",
    "pixel_contrast_loss",
    "ring_buffer_slots",
]

_MASKED = -1.0e4  # logit of masked entries: exp() underflows to 0, unlike -inf it keeps logsumexp's gradient finite


def group_ranks(groups: torch.Tensor, shuffle: bool = True) -> torch.Tensor:
    """Rank of every element among the elements of its group.

    groups: (N,) int64 group ids (any values). Returns (N,) int64: 0 .. n_g - 1 within each group g, in a
    uniformly random order (``shuffle``) or in index order. One stable sort, no host sync.
    """
    n = groups.numel()
    if shuffle:
        perm = torch.randperm(n, device=groups.device)
        order = perm[torch.sort(groups[perm], stable=True).indices]
    else:
        order = torch.sort(groups, stable=True).indices
    sorted_groups = groups[order].contiguous()
    first = torch.searchsorted(sorted_groups, sorted_groups)  # position of the first element of each group
    ranks = torch.empty_like(groups)
    ranks[order] = torch.arange(n, device=groups.device) - first
    return ranks


def sample_anchors(
    labels: torch.Tensor,
    hard: torch.Tensor,
    num_classes: int,
    max_samples: int,
    max_views: int,
    min_pixels: int,
):
    """Segmentation-aware hard anchor sampling (spec §C.4, vectorised as in §C.10).

    Args:
        labels: (B, P) int64 class ids in [0, num_classes); negative = not an anchor candidate.
        hard: (B, P) bool, pixel misclassified (prediction != label); all False = plain random sampling.
        max_samples: anchor budget of the batch; ``n_view = clamp(max_samples // G, 1, max_views)`` with
            G the number of (image, class) groups kept.
        max_views: most anchors per (image, class) group.
        min_pixels: a group is kept only with more than this many pixels (official: ``max_views``).
    Returns:
        idx (A,) int64 flat indices into B*P (ascending), anchor labels (A,) int64. Each kept group gives
        ``min(n_view, n_g)`` anchors: half hard / half easy when both halves have at least n_view / 2
        pixels, otherwise all of the short half and the rest from the other one; uniform within a half.
    """
    b, p = labels.shape
    device = labels.device
    y = labels.flatten()
    valid = y >= 0
    hard = hard.flatten() & valid
    num_groups = b * num_classes
    image = torch.arange(b, device=device).repeat_interleave(p)
    g = torch.where(valid, image * num_classes + y.clamp(min=0), num_groups)  # invalid -> extra bucket
    count = torch.zeros(num_groups + 1, dtype=torch.int64, device=device)
    n = count.scatter_add(0, g, torch.ones_like(g))[:-1]
    n_hard = count.scatter_add(0, g, hard.long())[:-1]
    n_easy = n - n_hard
    kept = n > min_pixels
    n_view = (max_samples // kept.sum().clamp(min=1)).clamp(min=1, max=max_views)
    hard_ok, easy_ok = 2 * n_hard >= n_view, 2 * n_easy >= n_view
    half = n_view // 2
    keep_hard = torch.where(hard_ok & easy_ok, half, torch.where(hard_ok, n_view - n_easy, n_hard))
    keep_easy = torch.where(hard_ok & easy_ok, n_view - half, torch.where(hard_ok, n_easy, n_view - n_hard))
    keep_hard = torch.minimum(keep_hard.clamp(min=0), n_hard)
    keep_easy = torch.minimum(keep_easy.clamp(min=0), n_easy)
    # half-groups 2g (easy) and 2g + 1 (hard); the extra bucket 2 * num_groups takes no pixel
    sub = torch.where(valid, 2 * g + hard.long(), 2 * num_groups)
    quota = torch.cat([torch.stack([keep_easy, keep_hard], dim=1).flatten() * kept.repeat_interleave(2), n.new_zeros(1)])
    selected = group_ranks(sub) < quota[sub]
    idx = selected.nonzero().squeeze(1)  # the one host sync: the number of anchors
    return idx, y[idx]


def pixel_contrast_loss(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor = None,
    contrast_labels: torch.Tensor = None,
    contrast_valid: torch.Tensor = None,
    temperature: float = 0.1,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """Pixel contrast loss of the official code (spec §C.3), in fp32.

    For anchor i with positives P_i (same label) and negatives N_i (other labels) among the contrast set:
        l_i = -(loss_scale / |P_i|) * sum_{j in P_i} log( e^{s_ij} / (e^{s_ij} + sum_{k in N_i} e^{s_ik}) ),
    s_ij = a_i . c_j / temperature. The loss is the mean of l_i over anchors with at least one positive
    (0, still attached to the graph, when there is none).

    Args:
        anchors: (N, D) embeddings (unit norm in practice); anchor_labels (N,) int64.
        contrast: (M, D) contrast set with contrast_labels (M,) and optional contrast_valid (M,) bool;
            None = the anchors themselves, with the anchor excluded from its own positives.
    Returns:
        scalar loss.
    """
    a = anchors.float()
    self_contrast = contrast is None
    if self_contrast:
        c, c_labels = a, anchor_labels
    else:
        c, c_labels = contrast.float(), contrast_labels
    logits = a @ c.t() / temperature  # (N, M)
    same = anchor_labels[:, None] == c_labels[None, :]
    usable = torch.ones_like(same) if contrast_valid is None else contrast_valid[None, :].expand_as(same)
    positive = same & usable
    if self_contrast:
        positive = positive & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
    negative = ~same & usable
    # log(e^s / (e^s + sum_neg e^t)) = -softplus(logsumexp_neg(t) - s): stable without a max shift
    lse_neg = torch.logsumexp(logits.masked_fill(~negative, _MASKED), dim=1, keepdim=True)
    log_prob = -F.softplus(lse_neg - logits)
    num_pos = positive.sum(dim=1)
    per_anchor = (log_prob * positive).sum(dim=1) / num_pos.clamp(min=1)
    has_pos = num_pos > 0
    return -loss_scale * (per_anchor * has_pos).sum() / has_pos.sum().clamp(min=1)


def ring_buffer_slots(labels: torch.Tensor, valid: torch.Tensor, ptr: torch.Tensor, size: int):
    """Where new entries go in class-wise FIFO queues of ``size`` slots (spec §C.9 Q1, §C.10).

    Args:
        labels: (R,) int64 class of each new row (in arrival order); valid (R,) bool.
        ptr: (K,) int64 next write position of each class queue.
    Returns:
        slot (R,) int64 position in its class queue, keep (R,) bool (valid and among the newest ``size``
        rows of its class in this update: older ones would be overwritten in the same update),
        count (K,) int64 valid rows per class. New pointer: ``(ptr + count) % size``.
    """
    k = ptr.numel()
    cls = torch.where(valid, labels, k)
    count = torch.zeros(k + 1, dtype=torch.int64, device=labels.device).scatter_add(0, cls, torch.ones_like(cls))[:k]
    rank = group_ranks(cls, shuffle=False)
    c = cls.clamp(max=k - 1)
    keep = valid & (rank >= (count[c] - size).clamp(min=0))
    slot = (ptr[c] + rank) % size
    return slot, keep, count
