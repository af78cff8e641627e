"""SSA-Seg training losses as pure tensor functions (spec §4); no detectron2, no module state.

Shapes: B images, K classes, C channels, h x w feature resolution, H x W label resolution. Label maps
are int64 with ``ignore_value`` for unlabelled pixels. Every function is vectorised (gather / scatter /
max-pool, no Python loop over pixels or classes), runs on the inputs' device and never syncs with the
host, and returns a scalar that is 0 (not NaN) when there is nothing to average.

Defects of the official code fixed here (spec §8.2), each also noted at the place it is fixed:
* boundary mask on the device with max-pooling instead of OpenCV Canny on the CPU every step (§8.2.2);
* dice excludes ignore pixels instead of counting them as negatives (§8.2.3);
* no one-hot tensors and no loops over present classes: scatter_add / gather (§8.2.5, §8.2.7);
* a class with no boundary (or no interior) pixels averages only its non-empty part (§8.2.9).
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "downsample_labels",
    "label_boundaries",
    "cross_entropy",
    "dice_loss",
    "response_distillation",
    "relation_distillation",
    "spatial_distillation",
    "present_classes",
]


def downsample_labels(labels: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of a label map (PyTorch's legacy "nearest", as the official code).

    Args:
        labels: (B, H, W) int64.
        size: (h, w).
    Returns:
        (B, h, w) int64.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def label_boundaries(labels: torch.Tensor, width: int = 3, border: int = 0) -> torch.Tensor:
    """Boundary band of a label map: pixels whose ``width x width`` neighbourhood holds another label.

    Replaces the official Canny + 3x3 dilation on the CPU with OpenCV (spec §8.2.2): two max-pools on the
    device. Out-of-image pixels are not "another label" (max-pool pads with -inf), so the image frame
    is not a boundary. The ignore value is treated as a label of its own, as in the official code, so
    class <-> ignore transitions (e.g. base <-> unlabelled novel regions, spec §9.3.7) are boundaries;
    ignore pixels themselves are excluded by the losses.

    Args:
        labels: (B, h, w) int64.
        width: odd neighbourhood size; a label change gives a band of ``width - 1`` pixels across it
            (2 for 3; the official 1-px Canny edge dilated by a 3x3 kernel gives 3).
        border: zero out a frame of this many pixels along the image border (official: 6; 0 = none).
    Returns:
        (B, h, w) bool.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"boundary width must be a positive odd number, got {width}")
    if border < 0:
        raise ValueError(f"boundary border must be >= 0, got {border}")
    # defect fix (spec §8.2.2): two max-pools on the labels' device instead of Canny + dilation in OpenCV
    x = labels[:, None].float()
    pad = width // 2
    local_max = F.max_pool2d(x, width, stride=1, padding=pad)
    local_min = -F.max_pool2d(-x, width, stride=1, padding=pad)
    edge = (local_max != local_min)[:, 0]
    if border > 0:
        frame = torch.zeros_like(edge)
        frame[:, border:-border, border:-border] = True
        edge = edge & frame
    return edge


def present_classes(labels: torch.Tensor, num_classes: int, ignore_value: int = 255) -> torch.Tensor:
    """Which classes each image's label map holds (``ignore_value`` and ids >= K are skipped).

    Args:
        labels: (B, h, w) int64.
    Returns:
        (B, K) bool.
    """
    flat = labels.flatten(1)
    valid = (flat != ignore_value) & (flat >= 0) & (flat < num_classes)
    index = torch.where(valid, flat, torch.zeros_like(flat))
    counts = torch.zeros(flat.shape[0], num_classes, dtype=torch.int64, device=labels.device)
    return counts.scatter_add_(1, index, valid.long()) > 0


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Softmax cross-entropy averaged over the non-ignored pixels (0 when there is none).

    Args:
        logits: (B, K, H, W); labels: (B, H, W) int64.
    """
    total = F.cross_entropy(logits, labels, ignore_index=ignore_value, reduction="sum")
    return total / (labels != ignore_value).sum().clamp(min=1)


def _per_class_sums(values: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) sums of ``values`` (B, N) over the valid pixels of each label (labels (B, N), valid (B, N))."""
    index = torch.where(valid, labels, torch.zeros_like(labels))
    out = values.new_zeros(values.shape[0], num_classes)
    return out.scatter_add_(1, index, values * valid)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Per-class binary dice on ``sigmoid(logits)``, averaged over the (image, class) pairs present.

    For image b and class k present in ``labels[b]``: p = sigmoid(logits[b, k]), t = [labels[b] == k],
    d = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), sums over the **non-ignored** pixels only (the
    official criterion counts ignore pixels as negatives, spec §8.2.3). Loss = sum(d) / max(#pairs, 1);
    the pair count is local (the official all-reduces it over GPUs, spec §8.2.8). The official sigmoid
    focal term, computed and discarded, is dropped (spec §8.2.7).

    Args:
        logits: (B, K, H, W); labels: (B, H, W) int64.
    """
    b, k = logits.shape[:2]
    valid = (labels != ignore_value).flatten(1)
    flat_labels = labels.flatten(1)
    prob = logits.flatten(2).sigmoid()  # B, K, N
    safe = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    prob_at_label = prob.gather(1, safe[:, None])[:, 0]  # B, N
    inter = _per_class_sums(prob_at_label, flat_labels, valid, k)
    area = _per_class_sums(torch.ones_like(prob_at_label), flat_labels, valid, k)
    prob_sum = (prob * valid[:, None]).sum(-1)  # defect fix (spec §8.2.3): ignore pixels are not negatives
    dice = 1 - (2 * inter + 1) / (prob_sum + area + 1)
    present = area > 0
    return (dice * present).sum() / present.sum().clamp(min=1)


def response_distillation(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    boundary: torch.Tensor,
    ignore_value: int = 255,
    smooth: float = 0.5,
) -> torch.Tensor:
    """Boundary-, class- and entropy-weighted response distillation L_rd (spec §4.1).

    Per pixel i (all at feature resolution): soft target q_i = smooth * softmax(teacher_i) +
    (1 - smooth) * onehot(y_i); l_i = -sum_k q_ik log softmax(student_i)_k; weight H_i = entropy of
    softmax(teacher_i), 0 on ignore pixels. For every class k present in the batch, the H-weighted mean
    of l over its boundary pixels and over its interior pixels are averaged -- only the non-empty parts
    (the official code adds a 0 for an empty part and still halves, spec §8.2.9) -- and L_rd is the mean
    over the present classes (0 when none).

    Args:
        student: (B, K, h, w) logits O (gradient flows here).
        teacher: (B, K, h, w) teacher logits; detached inside.
        labels: (B, h, w) int64 labels at feature resolution.
        boundary: (B, h, w) bool from :func:`label_boundaries`.
        smooth: weight of the teacher distribution in the target (official 0.5).
    """
    k = student.shape[1]
    teacher = teacher.detach()
    valid = (labels != ignore_value).flatten(1)
    flat_labels = labels.flatten(1)
    safe = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    log_p = F.log_softmax(student.flatten(2), dim=1)  # B, K, N
    p_t = F.softmax(teacher.flatten(2), dim=1)
    soft_ce = -(p_t * log_p).sum(1)
    hard_ce = -log_p.gather(1, safe[:, None])[:, 0]
    loss = smooth * soft_ce + (1 - smooth) * hard_ce  # B, N
    entropy = -(p_t * torch.log(p_t + 1e-12)).sum(1) * valid
    edge = boundary.flatten(1)

    parts = []
    for mask in (valid & edge, valid & ~edge):
        num = _per_class_sums(loss * entropy, flat_labels, mask, k).sum(0)
        den = _per_class_sums(entropy, flat_labels, mask, k).sum(0)
        count = _per_class_sums(torch.ones_like(loss), flat_labels, mask, k).sum(0)
        parts.append((num / (den + 1e-12), count > 0))
    (edge_mean, has_edge), (inner_mean, has_inner) = parts
    num_parts = has_edge.float() + has_inner.float()
    # defect fix (spec §8.2.9): average only the non-empty parts (official: (0 + c_k) / 2 without boundary pixels)
    per_class = (edge_mean * has_edge + inner_mean * has_inner) / num_parts.clamp(min=1)
    present = num_parts > 0
    return (per_class * present).sum() / present.sum().clamp(min=1)


def relation_distillation(student: torch.Tensor, teacher: torch.Tensor, tau: float = 15.0, present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One-sided inter-prototype relation distillation L_sd (spec §4.3), unweighted.

    R(X)[b, i] = softmax_j(tau * <n(X_bi), sg(n(X_bj))>); loss = mean_{b,i} sum_{j != i}
    max(0, R(student) - R(teacher)) -- only pairs the student finds more similar than the teacher.

    Args:
        student: (B, K, C) semantic prototypes S_p; teacher: (B, K, C) teacher prototypes (detached inside).
        present: optional (B, K) bool: restrict rows and columns to these classes per image (spec §9.3.1:
            classes without ground truth in the image, e.g. weak-shot novel classes, have no teacher
            target); the softmax runs over the present j only and the mean over the present (b, i).
            None = all K classes, as the official code.
    """
    k = student.shape[1]

    def relation(x):
        x = F.normalize(x, dim=-1)
        sim = tau * torch.einsum("bic,bjc->bij", x, x.detach())
        if present is not None:
            # finite fill: an image without present classes gives uniform (masked-out) rows, not NaN
            sim = sim.masked_fill(~present[:, None, :], -1e4)
        return F.softmax(sim, dim=-1)

    off_diagonal = 1 - torch.eye(k, device=student.device, dtype=student.dtype)
    gap = (relation(student) - relation(teacher.detach())).clamp(min=0) * off_diagonal
    rows = gap.sum(-1)  # B, K
    if present is None:
        return rows.mean()
    return (rows * present).sum() / present.sum().clamp(min=1)


def spatial_distillation(student: torch.Tensor, teacher: torch.Tensor, present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Spatial-domain distillation L_pd (spec §4.4), unweighted: channel-distribution cross-entropy.

    loss = mean_{b,k} -sum_c softmax_c(teacher[b, k]) log softmax_c(student[b, k]).

    Args:
        student: (B, K, C) spatial prototypes P_p; teacher: (B, K, C) teacher ones (detached inside).
        present: optional (B, K) bool: average over these (image, class) pairs only (spec §9.3.1);
            None = all, as the official code.
    """
    target = F.softmax(teacher.detach(), dim=-1)
    per_class = -(target * F.log_softmax(student, dim=-1)).sum(-1)  # B, K
    if present is None:
        return per_class.mean()
    return (per_class * present).sum() / present.sum().clamp(min=1)
