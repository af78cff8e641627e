"""Ground-truth-guided teacher of SSA-Seg (spec §3): training only, never part of inference.

The teacher has the structure of the student classifier but builds its prototypes from ground-truth
class centres instead of the coarse mask, with its own fusion MLPs and projection. It shares the pixel
features, positional features, fixed prototypes and position basis with the student (passed in), is
trained by its own CE + dice, and its outputs are the (detached) distillation targets.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SSATeacher", "class_means", "prototype_mlp", "cosine_logits", "inverse_norm"]


def prototype_mlp(channels: int, hidden_dim: int) -> nn.Sequential:
    """Fusion MLP phi: [a ; b] (2C) -> C, as the official ``center_*_proj``: bias-free Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(2 * channels, hidden_dim, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden_dim, channels))


def cosine_logits(pixels: torch.Tensor, inv_norm: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * cos(pixel, prototype), with the pixel normalisation applied to the K logits instead of the C
    channels (cheaper when K <= C, same result as normalising the pixels first).

    Args:
        pixels: (B, C, h, w) pixel embeddings (not normalised).
        inv_norm: (B, 1, h, w) their inverse L2 norms, from :func:`inverse_norm`.
        prototypes: (B, K, C) class embeddings (normalised here).
    Returns:
        (B, K, h, w), values in [-tau, tau].
    """
    return torch.einsum("bkc,bchw->bkhw", F.normalize(prototypes, dim=-1), pixels) * (tau * inv_norm)


def inverse_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """1 / max(||x||_2, eps) along ``dim`` (kept), the factor ``F.normalize`` divides by."""
    return torch.rsqrt((x * x).sum(dim, keepdim=True).clamp(min=eps * eps))


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_value: int, per_image: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard class means of features under a label map, with one scatter (no loop over classes, spec §8.2.5).

    Args:
        features: (B, C, h, w).
        labels: (B, h, w) int64 at the same resolution; ``ignore_value`` pixels are skipped.
        per_image: True: one mean per (image, class); False: one per class over the whole batch.
    Returns:
        means: (B, K, C) if per_image else (K, C); rows of absent classes are 0.
        present: (B, K) if per_image else (K,) bool.
    """
    b, c = features.shape[:2]
    k = num_classes
    flat = features.flatten(2).transpose(1, 2).reshape(-1, c)  # B*h*w, C
    labels = labels.reshape(b, -1)
    valid = labels != ignore_value
    index = torch.where(valid, labels, torch.full_like(labels, k))  # ignore -> spare bin k
    if per_image:
        index = index + (k + 1) * torch.arange(b, device=labels.device)[:, None]
        bins = b * (k + 1)
    else:
        bins = k + 1
    index = index.reshape(-1)
    sums = flat.new_zeros(bins, c).index_add_(0, index, flat)
    counts = torch.bincount(index, minlength=bins).to(flat.dtype)
    if per_image:
        sums, counts = sums.view(b, k + 1, c)[:, :k], counts.view(b, k + 1)[:, :k]
    else:
        sums, counts = sums[:k], counts[:k]
    return sums / counts.clamp(min=1)[..., None], counts > 0


class SSATeacher(nn.Module):
    """GT-guided teacher: phi_hat_s, phi_hat_p and G_hat (4C^2 + 2C parameters, training only).

    * Semantic centres are **batch-level** (official): the mean of the pixel features over all pixels
      of the batch labelled k; classes absent from the batch fall back to sg(prototype), per image.
    * Spatial centres are **per image**: the mean of the positional features over the image's pixels
      labelled k; absent classes fall back to sg(position basis row).
    * S_hat = phi_hat_s([semantic centre ; prototype]) (prototype not detached, as the official code);
      P_hat = phi_hat_p([spatial centre ; basis]) (centre first, as the official code);
      O_hat = tau * cos(S_f + P_f, G_hat(S_hat + P_hat)).
    * With ``semantic_gate`` (the student's residual update, spec §9.3.4) the teacher mirrors it:
      S_hat = W + g_hat * phi_hat_s([semantic centre ; W]) with its own learnable scalar g_hat.
    """

    def __init__(self, channels: int, num_classes: int, hidden_dim: int, tau: float = 15.0, ignore_value: int = 255, semantic_gate: Optional[float] = None):
        """``semantic_gate``: None = official S_hat = phi_hat_s(...); a float = initial g_hat of the residual form."""
        super().__init__()
        self.num_classes = num_classes
        self.tau = tau
        self.ignore_value = ignore_value
        self.semantic_fuse = prototype_mlp(channels, hidden_dim)
        self.spatial_fuse = prototype_mlp(channels, hidden_dim)
        self.prototype_proj = nn.Linear(channels, channels, bias=False)
        self.semantic_gate = None if semantic_gate is None else nn.Parameter(torch.tensor(float(semantic_gate)))

    def forward(self, features, position_features, pixels, pixel_inv_norm, prototypes, position_basis, labels):
        """
        Args:
            features: (B, C, h, w) pixel features S_f.
            position_features: (B, C, h, w) positional features P_f.
            pixels: (B, C, h, w) pixel embeddings S_f + P_f and pixel_inv_norm (B, 1, h, w) their inverse
                norms (computed once by the student).
            prototypes: (B, K, C) fixed prototypes W (expanded when shared by the batch).
            position_basis: (K, C) position basis P, or (B, K, C) per image (derived from per-image prototypes).
            labels: (B, h, w) int64 ground truth at feature resolution.
        Returns:
            logits (B, K, h, w) O_hat, semantic prototypes (B, K, C) S_hat, spatial prototypes (B, K, C) P_hat.
        """
        b = features.shape[0]
        k = self.num_classes
        sem_mean, sem_present = class_means(features, labels, k, self.ignore_value, per_image=False)
        sem_centre = torch.where(sem_present[None, :, None], sem_mean[None].expand(b, -1, -1), prototypes.detach())
        pos_mean, pos_present = class_means(position_features, labels, k, self.ignore_value, per_image=True)
        basis = position_basis.expand(b, -1, -1) if position_basis.dim() == 3 else position_basis[None].expand(b, -1, -1)
        pos_centre = torch.where(pos_present[..., None], pos_mean, basis.detach())

        semantic = self.semantic_fuse(torch.cat([sem_centre, prototypes], dim=-1))
        if self.semantic_gate is not None:
            semantic = prototypes + self.semantic_gate * semantic
        spatial = self.spatial_fuse(torch.cat([pos_centre, basis], dim=-1))
        logits = cosine_logits(pixels, pixel_inv_norm, self.prototype_proj(semantic + spatial), self.tau)
        return logits, semantic, spatial
