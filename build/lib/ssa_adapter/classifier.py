"""SSA-Seg's adaptive pixel classifier (spec §1-§2): coarse mask -> SEPA + SPPA -> tau-scaled cosine logits.

Pure PyTorch (no detectron2, no cfg). The fixed class prototypes are an **input**, so one module serves

* a per-pixel head, where they are the weight (K, C) and bias (K,) of the head's 1x1 classifier, and
* a mask-classification model, where they are per-image class prototypes (B, K, C), e.g. pooled from
  the query mask-embeddings, optionally with externally computed coarse class logits (B, K, h, w).

Training adds the ground-truth-guided teacher (:class:`~ssa_adapter.teacher.SSATeacher`) and the online
multi-domain distillation losses (:meth:`SSAClassifier.losses`). The teacher is a training-only
sub-module: it is never run in inference, ``with_teacher=False`` does not build it, and
:meth:`SSAClassifier.drop_teacher` removes it before exporting weights.
"""
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import cross_entropy, dice_loss, downsample_labels, label_boundaries, present_classes, relation_distillation, response_distillation, spatial_distillation
from .teacher import SSATeacher, cosine_logits, inverse_norm, prototype_mlp

__all__ = ["SSAClassifier", "DEFAULT_LOSS_WEIGHTS", "inference_parameter_increase", "drop_teachers"]

# Loss term -> weight, as the official code (spec §4 table); returned as "loss_ssa_<term>". The main CE
# of the refined logits is the caller's (e.g. the per-pixel head's "loss_sem_seg").
DEFAULT_LOSS_WEIGHTS = {
    "coarse": 1.0,  # CE of the coarse mask M_c (in the code, not in the paper)
    "dice": 1.0,  # dice of the refined logits O (L_c,dice)
    "teacher_ce": 1.0,  # CE of the teacher logits O_hat (L_g,ce)
    "teacher_dice": 1.0,  # dice of O_hat (L_g,dice)
    "rd": 1.0,  # response-domain distillation (L_rd)
    "sd": 10.0,  # semantic-domain relation distillation (L_sd)
    "pd": 0.4,  # spatial-domain distillation (L_pd)
}
_TEACHER_TERMS = ("teacher_ce", "teacher_dice", "rd", "sd", "pd")
# Position basis P: "learned" = a (K, C) table (official); "prototypes" = P = A W, a learned bias-free
# linear map of the fixed prototypes, so classes without teacher signal (weak-shot novel) inherit a basis
# (spec §9.3.5) and per-image prototypes (B, K, C) give a per-image basis.
POSITION_BASES = ("learned", "prototypes")


def inference_parameter_increase(channels: int, num_classes: int, position_basis: str = "learned", semantic_gate: bool = False) -> int:
    """Parameters SSA adds at inference on top of a kept 1x1 classifier (spec §1): 4C^2 + KC + 12C.

    (Depth-wise 3x3 conv 10C, position basis KC, two fusion MLPs 2 (1.5C^2 + C), projection C^2; hidden
    width C/2, so C even.) The training-only teacher adds 4C^2 + 2C more. With ``position_basis`` =
    "prototypes" the KC table is a C x C map instead; a residual semantic update adds its scalar gate.
    """
    basis = channels**2 if position_basis == "prototypes" else num_classes * channels
    return 4 * channels**2 + basis + 12 * channels + int(semantic_gate)


class SSAClassifier(nn.Module):
    """
    Semantic and spatial adaptive classifier. With S_f the pixel features, W the fixed prototypes:

    * coarse mask M_c = W . Drop(S_f) + b (or given);
    * positional features P_f = DWConv3x3(S_f);
    * SPPA: P_c[k] = sum_i softmax_pixels(M_c[k])_i P_f[:, i]; P_p = phi_p([P ; P_c]) with P a learnable
      (K, C) position basis;
    * SEPA: S_c[k] = soft class mean of S_f under softmax_classes(M_c); S_p = phi_s([S_c ; W]);
    * O = tau * cos(S_f + P_f, G(S_p + P_p)), so |O| <= tau.

    Weak-shot options (spec §9.3; off by default = the official code): a residual, gated semantic update
    S_p = W + g * phi_s([S_c ; W]) with a learnable scalar g (``semantic_gate`` = its initial value); a
    position basis derived from the prototypes, P = A W (``position_basis="prototypes"``); and the
    semantic / spatial distillation restricted to the classes present in each image's labels
    (``distill_present_only``), so classes without ground truth get no teacher target.

    The classifier runs in fp32 even under autocast (its 1e-12 normalisations are fp16-unsafe,
    spec §8.2.11).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        *,
        hidden_dim: Optional[int] = None,
        tau: float = 15.0,
        dropout: float = 0.0,
        with_teacher: bool = True,
        ignore_value: int = 255,
        boundary_width: int = 3,
        boundary_border: int = 0,
        kd_smooth: float = 0.5,
        loss_weights: Optional[Mapping[str, float]] = None,
        semantic_gate: Optional[float] = None,
        position_basis: str = "learned",
        distill_present_only: bool = False,
    ):
        """
        Args:
            channels: C, channels of the pixel features and of the prototypes.
            num_classes: K.
            hidden_dim: hidden width of the fusion MLPs (default C // 2, as the official code).
            tau: fixed logit scale (official 15).
            dropout: Dropout2d on the features of the coarse path only (mmseg heads 0.1; the
                detectron2 per-pixel head has none). Ignored when coarse logits are given.
            with_teacher: build the GT-guided teacher (needed by the teacher / distillation losses).
            ignore_value: label of unlabelled pixels.
            boundary_width: odd neighbourhood size of the boundary band of L_rd (see
                :func:`~ssa_adapter.losses.label_boundaries`).
            boundary_border: boundary frame suppressed along the image border, feature pixels (official 6).
            kd_smooth: weight of the teacher distribution in the L_rd target (official 0.5).
            loss_weights: overrides of :data:`DEFAULT_LOSS_WEIGHTS`; a 0 weight skips the term.
            semantic_gate: None = official S_p = phi_s([S_c ; W]); a float = initial value of the learnable
                gate g of the residual update S_p = W + g * phi_s([S_c ; W]) (student and teacher).
            position_basis: one of :data:`POSITION_BASES`.
            distill_present_only: restrict L_sd (rows and columns) and L_pd to the classes present in each
                image's labels (official: all K classes).
        """
        super().__init__()
        weights = dict(DEFAULT_LOSS_WEIGHTS)
        unknown = set(loss_weights or {}) - set(weights)
        if unknown:
            raise ValueError(f"unknown SSA loss terms {sorted(unknown)}; accepted: {sorted(weights)}")
        weights.update(loss_weights or {})
        if position_basis not in POSITION_BASES:
            raise ValueError(f"SSA position_basis must be one of {POSITION_BASES}, got {position_basis!r}")
        hidden_dim = hidden_dim or channels // 2
        self.channels = channels
        self.num_classes = num_classes
        self.tau = float(tau)
        self.ignore_value = ignore_value
        self.boundary_width = boundary_width
        self.boundary_border = boundary_border
        self.kd_smooth = kd_smooth
        self.loss_weights = weights
        self.distill_present_only = distill_present_only

        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.position_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        if position_basis == "learned":
            self.position_basis = nn.Embedding(num_classes, channels)
        else:
            self.basis_proj = nn.Linear(channels, channels, bias=False)
        self.semantic_fuse = prototype_mlp(channels, hidden_dim)
        self.spatial_fuse = prototype_mlp(channels, hidden_dim)
        self.prototype_proj = nn.Linear(channels, channels, bias=False)
        self.semantic_gate = None if semantic_gate is None else nn.Parameter(torch.tensor(float(semantic_gate)))
        self.teacher = SSATeacher(channels, num_classes, hidden_dim, tau, ignore_value, semantic_gate) if with_teacher else None

    def drop_teacher(self) -> None:
        """Delete the training-only teacher (before exporting inference weights)."""
        self.teacher = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A training checkpoint loads into a teacher-less (inference) module: its teacher weights are
        # dropped instead of being reported as unexpected keys.
        if self.teacher is None:
            for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        features: torch.Tensor,
        prototypes: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        coarse_logits: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """
        Args:
            features: (B, C, h, w) pixel features S_f.
            prototypes: fixed class prototypes W: (K, C) shared by the batch (a 1x1 classifier's weight),
                or (B, K, C) per image (e.g. class prototypes pooled from query mask-embeddings).
            bias: optional (K,) or (B, K) bias of the coarse mask (only used when ``coarse_logits`` is None).
            coarse_logits: optional (B, K, h, w) coarse class logits M_c; default W . Drop(S_f) + bias.
        Returns:
            logits: (B, K, h, w) fp32 refined logits O, |O| <= tau.
            aux: tensors for :meth:`losses`: ``coarse_logits`` (B, K, h, w), ``features`` and
                ``position_features`` (B, C, h, w), ``pixels`` (B, C, h, w) = S_f + P_f and
                ``pixel_inv_norm`` (B, 1, h, w) = 1 / ||S_f + P_f||,
                ``prototypes`` (B, K, C), ``position_basis`` P (B, K, C), ``semantic_prototypes`` S_p and
                ``spatial_prototypes`` P_p (B, K, C).
        """
        b, c = features.shape[:2]
        k = self.num_classes
        if prototypes.dim() == 2:
            expected = (k, c)
        elif prototypes.dim() == 3:
            expected = (b, k, c)
        else:
            raise ValueError(f"prototypes must be (K, C) or (B, K, C), got {tuple(prototypes.shape)}")
        if tuple(prototypes.shape) != expected:
            raise ValueError(f"prototypes of shape {tuple(prototypes.shape)} do not match features (B={b}, C={c}) and K={k}")

        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            protos = prototypes.float().expand(b, k, c) if prototypes.dim() == 2 else prototypes.float()
            if coarse_logits is None and prototypes.dim() == 2 and (bias is None or bias.dim() == 1):
                coarse = F.conv2d(self.dropout(features), prototypes.float()[:, :, None, None], None if bias is None else bias.float())
            elif coarse_logits is None:
                coarse = torch.einsum("bkc,bchw->bkhw", protos, self.dropout(features))
                if bias is not None:
                    coarse = coarse + bias.float().reshape(-1, k)[..., None, None]
            else:
                coarse = coarse_logits.float()
            position = self.position_conv(features)
            coarse_flat = coarse.flatten(2)  # B, K, hw

            # SPPA: spatial softmax over the pixels of each class
            spatial_attn = F.softmax(coarse_flat, dim=-1)
            spatial_centre = torch.bmm(spatial_attn, position.flatten(2).transpose(1, 2))
            if hasattr(self, "position_basis"):
                basis = self.position_basis.weight[None].expand(b, -1, -1)
            else:
                basis = self.basis_proj(protos)
            spatial = self.spatial_fuse(torch.cat([basis, spatial_centre], dim=-1))

            # SEPA: soft class means under the per-pixel class posterior
            semantic_attn = F.softmax(coarse_flat, dim=1)
            semantic_centre = torch.bmm(semantic_attn, features.flatten(2).transpose(1, 2))
            semantic_centre = semantic_centre / (semantic_attn.sum(-1, keepdim=True) + 1e-12)
            semantic = self.semantic_fuse(torch.cat([semantic_centre, protos], dim=-1))
            if self.semantic_gate is not None:
                semantic = protos + self.semantic_gate * semantic

            pixels = features + position
            inv_norm = inverse_norm(pixels)
            logits = cosine_logits(pixels, inv_norm, self.prototype_proj(semantic + spatial), self.tau)

        aux = {
            "coarse_logits": coarse,
            "features": features,
            "position_features": position,
            "pixels": pixels,
            "pixel_inv_norm": inv_norm,
            "prototypes": protos,
            "position_basis": basis,
            "semantic_prototypes": semantic,
            "spatial_prototypes": spatial,
        }
        return logits, aux

    def losses(self, logits: torch.Tensor, aux: Mapping[str, torch.Tensor], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted SSA training losses (everything except the main CE of ``logits``, which is the caller's).

        Runs the teacher (if built). CE and dice terms compare logits bilinearly upsampled to the label
        size with align_corners=False -- the inference convention (the official code trains with
        align_corners=True and tests with False, spec §8.2.4). Teacher centres, L_rd and its boundary mask
        use the labels nearest-downsampled to the feature size.

        Args:
            logits: (B, K, h, w) from :meth:`forward`.
            aux: the aux dict from :meth:`forward`.
            targets: (B, H, W) int64 ground truth, ``ignore_value`` = unlabelled (H x W is usually the
                padded input size, a multiple of h x w).
        Returns:
            dict ``loss_ssa_<term>`` -> weighted scalar, for the terms of :data:`DEFAULT_LOSS_WEIGHTS`
            with a non-zero weight (teacher terms only when the teacher is built).
        """
        w = self.loss_weights
        size = targets.shape[-2:]

        def upsample(x):
            # defect fix (spec §8.2.4): align_corners=False as in inference (official: True in training only)
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            terms = {}
            if w["coarse"]:
                terms["coarse"] = cross_entropy(upsample(aux["coarse_logits"]), targets, self.ignore_value)
            if w["dice"]:
                terms["dice"] = dice_loss(upsample(logits), targets, self.ignore_value)
            if self.teacher is not None and any(w[t] for t in _TEACHER_TERMS):
                small = downsample_labels(targets, logits.shape[-2:])
                t_logits, t_semantic, t_spatial = self.teacher(
                    aux["features"], aux["position_features"], aux["pixels"], aux["pixel_inv_norm"], aux["prototypes"], aux["position_basis"], small
                )
                present = present_classes(small, self.num_classes, self.ignore_value) if self.distill_present_only else None
                if w["teacher_ce"] or w["teacher_dice"]:
                    t_up = upsample(t_logits)
                if w["teacher_ce"]:
                    terms["teacher_ce"] = cross_entropy(t_up, targets, self.ignore_value)
                if w["teacher_dice"]:
                    terms["teacher_dice"] = dice_loss(t_up, targets, self.ignore_value)
                if w["rd"]:
                    # defect fix (spec §8.2.2): boundary band by max-pooling on the device, not OpenCV on the CPU
                    boundary = label_boundaries(small, self.boundary_width, self.boundary_border)
                    terms["rd"] = response_distillation(logits, t_logits, small, boundary, self.ignore_value, self.kd_smooth)
                if w["sd"]:
                    terms["sd"] = relation_distillation(aux["semantic_prototypes"], t_semantic, self.tau, present)
                if w["pd"]:
                    terms["pd"] = spatial_distillation(aux["spatial_prototypes"], t_spatial, present)
        return {f"loss_ssa_{name}": value * w[name] for name, value in terms.items()}


def drop_teachers(module: nn.Module) -> int:
    """Remove the teacher of every :class:`SSAClassifier` inside ``module``; returns how many were removed."""
    found = [m for m in module.modules() if isinstance(m, SSAClassifier) and m.teacher is not None]
    for m in found:
        m.drop_teacher()
    return len(found)
