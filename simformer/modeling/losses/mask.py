"""Mask losses and their pairwise (matching-cost) forms.

Shapes: ``logits`` and ``targets`` are (N, P) for N masks of P pixels (flattened); pairwise costs take
(Q, P) predictions and (T, P) targets and return (Q, T).
"""
import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss", "dice_loss", "batch_sigmoid_focal_cost", "batch_dice_cost"]


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Per-mask sigmoid focal loss, averaged over pixels: (N, P), (N, P) -> (N,).

    loss(x) = alpha_t * (1 - p_t) ** gamma * BCEWithLogits(x, y),
    p_t = p y + (1 - p)(1 - y), alpha_t = alpha y + (1 - alpha)(1 - y).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=1)


def dice_loss(logits, targets, smooth: float = 1.0):
    """Per-mask dice loss: 1 - (2 sum p y + s) / (sum p + sum y + s); (N, P), (N, P) -> (N,)."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(dim=1)
    denominator = prob.sum(dim=1) + targets.sum(dim=1)
    return 1 - (numerator + smooth) / (denominator + smooth)


def batch_sigmoid_focal_cost(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Pairwise focal cost (Q, P) x (T, P) -> (Q, T): ``sigmoid_focal_loss`` of every prediction vs every
    target, as two matrix products (no Q*T*P tensor)."""
    num_pixels = logits.shape[1]
    prob = logits.sigmoid()
    focal_pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    focal_neg = prob**gamma * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    cost = focal_pos @ targets.T + focal_neg @ (1 - targets).T
    return cost / num_pixels


def batch_dice_cost(logits, targets, smooth: float = 1.0):
    """Pairwise dice cost (Q, P) x (T, P) -> (Q, T), equal to ``dice_loss`` for every pair."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + smooth) / (denominator + smooth)
