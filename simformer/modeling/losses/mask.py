"""Mask losses and their pairwise (matching-cost) forms.

Shapes: ``logits`` and ``targets`` are (N, P) for N masks of P pixels (flattened); pairwise costs take
(Q, P) predictions and (T, P) targets and return (Q, T).
"""
import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss", "dice_loss", "batch_sigmoid_focal_cost", "batch_dice_cost", "batch_focal_dice_cost"]


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0, binary_targets: bool = False):
    """Per-mask sigmoid focal loss, averaged over pixels: (N, P), (N, P) -> (N,).

    loss(x) = alpha_t * (1 - p_t) ** gamma * BCEWithLogits(x, y),
    p_t = p y + (1 - p)(1 - y), alpha_t = alpha y + (1 - alpha)(1 - y).

    ``binary_targets=True`` (targets in {0, 1}, e.g. ground-truth masks): the same values through
    :class:`_BinaryFocalLoss`, which keeps only the logits and targets for backward instead of about eight
    (N, P) intermediates (128 MiB -> 32 MiB for 16 masks at 512x512, per decoder layer).
    """
    if binary_targets:
        return _BinaryFocalLoss.apply(logits, targets, alpha, gamma)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=1)


class _BinaryFocalLoss(torch.autograd.Function):
    """:func:`sigmoid_focal_loss` for targets y in {0, 1} with a hand-written backward.

    With z = x if y = 1 else -x (the logit of the true label): p_t = sigmoid(z), BCE = -log sigmoid(z),
    loss = alpha_t (1 - p_t)^g BCE, and d loss / dz = -alpha_t (1 - p_t)^g (g p_t BCE + 1 - p_t);
    the intermediates are recomputed in backward from (x, y).
    """

    @staticmethod
    def _terms(x, y, alpha):
        pos = y > 0.5
        z = torch.where(pos, x, -x)
        alpha_t = torch.where(pos, alpha, 1.0 - alpha) if alpha >= 0 else None
        return pos, torch.sigmoid(z), F.logsigmoid(z).neg_(), alpha_t

    @staticmethod
    def forward(ctx, x, y, alpha, gamma):
        _, p_t, bce, alpha_t = _BinaryFocalLoss._terms(x, y, alpha)
        loss = p_t.neg_().add_(1.0).pow_(gamma).mul_(bce)
        if alpha_t is not None:
            loss.mul_(alpha_t)
        ctx.save_for_backward(x, y)
        ctx.alpha, ctx.gamma = alpha, gamma
        return loss.mean(dim=1)

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        pos, p_t, bce, alpha_t = _BinaryFocalLoss._terms(x, y, ctx.alpha)
        q = 1.0 - p_t
        dz = p_t.mul_(bce).mul_(ctx.gamma).add_(q).mul_(q.pow_(ctx.gamma)).neg_()
        if alpha_t is not None:
            dz.mul_(alpha_t)
        dz.mul_((grad / x.shape[1])[:, None])
        return torch.where(pos, dz, -dz), None, None, None


def dice_loss(logits, targets, smooth: float = 1.0):
    """Per-mask dice loss: 1 - (2 sum p y + s) / (sum p + sum y + s); (N, P), (N, P) -> (N,).

    With targets that need no gradient (masks, pseudo-labels) it runs through :class:`_DiceLoss`, which
    keeps only the logits and targets for backward (the targets are usually kept anyway) instead of the
    (N, P) probabilities: 4 MiB less per decoder layer for 16 masks at 256x256.
    """
    if not targets.requires_grad:
        return _DiceLoss.apply(logits, targets, smooth)
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(dim=1)
    denominator = prob.sum(dim=1) + targets.sum(dim=1)
    return 1 - (numerator + smooth) / (denominator + smooth)


class _DiceLoss(torch.autograd.Function):
    """:func:`dice_loss` with a hand-written backward: with I = sum p y, U = sum p + sum y,
    d loss / d p_k = ((2 I + s) - 2 y_k (U + s)) / (U + s)^2 and d p / d x = p (1 - p); p is recomputed
    from the saved logits."""

    @staticmethod
    def forward(ctx, x, y, smooth):
        prob = x.sigmoid()
        inter = (prob * y).sum(dim=1)
        union = prob.sum(dim=1) + y.sum(dim=1)
        ctx.save_for_backward(x, y, inter, union)
        ctx.smooth = smooth
        return 1 - (2 * inter + smooth) / (union + smooth)

    @staticmethod
    def backward(ctx, grad):
        x, y, inter, union = ctx.saved_tensors
        den = union + ctx.smooth
        scale = (grad / den.square())[:, None]
        prob = x.sigmoid()
        # (2I + s - 2 y (U + s)) p (1 - p) * grad / (U + s)^2
        d = y.mul(-2.0 * den[:, None]).add_((2 * inter + ctx.smooth)[:, None])
        return d.mul_(prob).mul_(prob.neg_().add_(1.0)).mul_(scale), None, None


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


@torch.no_grad()
def batch_focal_dice_cost(logits, targets, focal_weight: float = 1.0, dice_weight: float = 1.0, alpha: float = 0.25, gamma: float = 2.0, smooth: float = 1.0):
    """``focal_weight * batch_sigmoid_focal_cost + dice_weight * batch_dice_cost`` (the matcher's mask costs),
    (Q, P) x (T, P) -> (Q, T), equal up to float rounding, with three (Q, P) temporaries instead of about a
    dozen (one sigmoid shared by both costs; BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(-x) + x; the
    negative-target product folded into a row sum: f_neg @ (1 - t).T = f_neg.sum(-1) - f_neg @ t.T). The
    element-wise passes over Q x P values are what the full-resolution matcher spends its time on. No
    gradients (a matching cost)."""
    t = targets.to(logits.dtype)
    prob = logits.sigmoid()
    cost = logits.new_zeros((logits.shape[0], targets.shape[0]))
    if dice_weight:
        numerator = 2 * prob @ t.T
        denominator = prob.sum(-1)[:, None] + t.sum(-1)[None, :]
        cost += dice_weight * (1 - (numerator + smooth) / (denominator + smooth))
    if focal_weight:
        bce_pos = F.softplus(-logits)  # BCE(x, 1)
        focal_pos = (1 - prob).pow_(gamma).mul_(bce_pos)
        focal_neg = prob.pow_(gamma).mul_(bce_pos.add_(logits))  # prob and bce_pos reused: p^gamma * BCE(x, 0)
        if alpha >= 0:
            focal_pos.mul_(alpha)
            focal_neg.mul_(1 - alpha)
        neg_total = focal_neg.sum(-1, keepdim=True)
        cost += (focal_weight / logits.shape[1]) * (focal_pos.sub_(focal_neg) @ t.T + neg_total)
    return cost
