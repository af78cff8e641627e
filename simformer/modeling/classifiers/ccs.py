"""CCS layer + ACCM (Wu et al., "Semantic Segmentation via Pixel-to-Center Similarity Calculation", arXiv
2301.04870) as "CCSClassifier" in CLASSIFIER_REGISTRY.

Only the paper's abstract is public (no full text, no code), so the whole design is **[our design]**, following
/work/shared/specs/related_methods.md §A.3-§A.4 and §D.1; the deviations from that proposal are marked
[our design] where they are made. Results must be reported as "our CCS-style variant", not as a
reproduction.

* Global class centres ``W`` (K, C) are the weights of a kept 1x1 conv ``conv`` (same name and shape as
  ``LinearClassifier.conv``, so a linear-baseline checkpoint initialises them); its bias is the per-class
  logit bias ``β``.
* ACCM: coarse cosine logits of the pixels against ``W`` -> a spatial softmax per class -> soft class-wise
  average of the pixels ``ĉ`` -> scene-adapted centre ``c = ŵ + π g ⊙ φ([ŵ; ĉ])`` (``φ`` a 2-layer MLP whose last
  layer is zero-initialised, ``g`` a per-class sigmoid gate, ``π`` an optional detached presence score).
* CCS: logits ``s cos(x, c) + β`` with a learnable scale ``s`` (init 1/TAU, clamped to [1, 100]).
* Losses (training, with targets): coarse CE, intra-class (pixel-to-centre) hinge, inter-class
  (centre-to-centre) hinge, all already weighted and named ``loss_ccs_*``; the main CE is the head's.

Selected by ``MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME: "CCSClassifier"``; options under ``MODEL.CCS``.
"""
import math
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable

from ssa_adapter.losses import downsample_labels

from ..losses.class_center import inter_class_loss, intra_class_loss, present_classes
from .build import CLASSIFIER_REGISTRY, PrototypeSlot

__all__ = ["CCSClassifier", "DEFAULT_LOSS_WEIGHTS", "scene_adaptive_centres"]

# spec §A.3 "proposed defaults": coarse CE 0.4 (the usual auxiliary-head weight), intra 0.5, inter 0.5
DEFAULT_LOSS_WEIGHTS = {"coarse": 0.4, "intra": 0.5, "inter": 0.5}
INTER_CLASSES = ("present", "all")
SCALE_RANGE = (1.0, 100.0)
_EPS = 1e-6  # normalisation epsilon, representable in fp16 (F.normalize's 1e-12 is not)


def scene_adaptive_centres(
    base: torch.Tensor,
    coarse_logits: torch.Tensor,
    pixels: torch.Tensor,
    fusion: nn.Module,
    gate_logits: torch.Tensor,
    presence_gating: bool = True,
) -> torch.Tensor:
    """ACCM: move each global centre towards the pixels of its class in this image.

    ``A = softmax over pixels of coarse_logits`` (one spatial attention map per class);
    ``ĉ[b, k] = Σ_p A[b, k, p] pixels[b, :, p]``; ``c = base + π ⊙ σ(gate_logits) ⊙ fusion([base; ĉ])``, where
    ``π[b, k] = max_p softmax over classes of coarse_logits[b, :, p]`` (detached) with ``presence_gating``
    and 1 without. π keeps the centres of classes that no pixel prefers near their global centre, which the
    spatial softmax alone cannot do (it always averages *some* pixels; spec §A.6).

    [our design]: ``base`` and ``pixels`` are unit vectors here (the spec fuses the raw weights and pools the
    raw features), so the fusion does not depend on the scale of the 1x1 weights (std 0.01 at init, anything
    in a linear checkpoint) or of the features; ``‖ĉ‖ <= 1`` then also tells how coherent the attended pixels are.

    Args:
        base: (B, K, C) unit-norm initial centres (the 1x1 weights, or per-image prototypes).
        coarse_logits: (B, K, P) coarse logits of the P pixels.
        pixels: (B, C, P) unit-norm pixel features.
        fusion: module mapping (B, K, 2C) -> (B, K, C), e.g. the MLP ``φ``.
        gate_logits: (K,) per-class gate before the sigmoid.
        presence_gating: scale the update by the detached presence score π.
    Returns:
        (B, K, C) adapted centres (not normalised); equal to ``base`` when ``fusion`` outputs zeros.
    """
    attention = coarse_logits.softmax(dim=-1)
    pooled = torch.einsum("bkp,bcp->bkc", attention, pixels)
    weight = torch.sigmoid(gate_logits)[None, :, None]
    if presence_gating:
        weight = weight * coarse_logits.detach().softmax(dim=1).amax(dim=-1)[..., None]
    return base + weight * fusion(torch.cat([base, pooled], dim=-1))


@CLASSIFIER_REGISTRY.register()
class CCSClassifier(PrototypeSlot, nn.Module):
    """(B, C, h, w) features -> (B, K, h, w) logits ``s cos(x, c_{b,k}) + β_k`` with scene-adaptive centres.

    ``forward(features, targets=None, prototypes=None)`` returns ``(logits, losses)``; ``losses`` holds the
    weighted ``loss_ccs_{coarse,intra,inter}`` terms whose weight is non-zero, and is empty in inference or
    without targets. With ``prototypes`` (B, K, C) (the mask-classification placement, per-image class
    prototypes from the queries) those are the initial centres instead of ``conv.weight``; then
    ``conv.weight`` gets no gradient (``β`` = ``conv.bias`` still applies).

    Parameters beyond ``LinearClassifier`` (C channels, K classes): the MLP ``φ`` (2C -> C -> C,
    3C² + 2C), the gate (K) and the log-scale (1): ``3C² + 2C + K + 1`` in all.

    At initialisation ``φ`` outputs zeros, so the classifier is exactly the cosine classifier
    ``(1 / tau) cos(x, w_k) + β_k`` (spec §A.3 step 2).
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        tau: float = 0.1,
        coarse_scale: float = 10.0,
        presence_gating: bool = True,
        pool_stride: int = 1,
        intra_margin: float = 1.0,
        inter_margin: float = 0.0,
        inter_classes: str = "present",
        ignore_value: int = 255,
        loss_weights: Optional[Mapping[str, float]] = None,
    ):
        """
        Args:
            in_channels: C. num_classes: K.
            tau: the logit scale starts at 1 / tau (MODEL.CCS.INIT_TEMPERATURE, in [0.01, 1]).
            coarse_scale: fixed scale s₀ of the coarse cosine logits (MODEL.CCS.COARSE_SCALE, > 0).
            presence_gating: scale each centre update by the detached presence score (MODEL.CCS.PRESENCE_GATING).
            pool_stride: average-pool the features by this factor for the coarse logits and the pooled
                centres (MODEL.CCS.POOL_STRIDE, >= 1; the final logits stay at full resolution).
            intra_margin: target cosine of the intra-class hinge (MODEL.CCS.INTRA_MARGIN).
            inter_margin: allowed centre-to-centre cosine of the inter-class hinge (MODEL.CCS.INTER_MARGIN).
            inter_classes: "present" (pairs of classes labelled in the image) or "all" (MODEL.CCS.INTER_CLASSES).
            ignore_value: label of unlabelled pixels (MODEL.SEM_SEG_HEAD.IGNORE_VALUE).
            loss_weights: weights of "coarse", "intra", "inter" (MODEL.CCS.*_WEIGHT, >= 0; 0 = term skipped);
                missing names take :data:`DEFAULT_LOSS_WEIGHTS`.
        """
        super().__init__()
        if not 1.0 / SCALE_RANGE[1] <= tau <= 1.0 / SCALE_RANGE[0]:
            raise ValueError(f"MODEL.CCS.INIT_TEMPERATURE must be in [0.01, 1] (logit scale 1/INIT_TEMPERATURE in [1, 100]), got {tau}")
        if coarse_scale <= 0:
            raise ValueError(f"MODEL.CCS.COARSE_SCALE must be > 0, got {coarse_scale}")
        if pool_stride < 1:
            raise ValueError(f"MODEL.CCS.POOL_STRIDE must be >= 1, got {pool_stride}")
        if inter_classes not in INTER_CLASSES:
            raise ValueError(f"MODEL.CCS.INTER_CLASSES must be one of {INTER_CLASSES}, got {inter_classes!r}")
        weights = dict(DEFAULT_LOSS_WEIGHTS, **(loss_weights or {}))
        if set(weights) != set(DEFAULT_LOSS_WEIGHTS):
            raise ValueError(f"CCSClassifier: loss_weights names must be in {sorted(DEFAULT_LOSS_WEIGHTS)}, got {sorted(weights)}")
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"MODEL.CCS.{name.upper()}_WEIGHT must be >= 0, got {value}")

        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, 0, 0.01)
        nn.init.constant_(self.conv.bias, 0)
        self.fusion = nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.ReLU(), nn.Linear(in_channels, in_channels))
        nn.init.zeros_(self.fusion[-1].weight)
        nn.init.zeros_(self.fusion[-1].bias)
        # [our design] one scalar gate per class (the spec's g_k ⊙ leaves scalar vs. vector open); σ(0) = 0.5
        self.gate = nn.Parameter(torch.zeros(num_classes))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau)))

        self.coarse_scale = coarse_scale
        self.presence_gating = presence_gating
        self.pool_stride = pool_stride
        self.intra_margin = intra_margin
        self.inter_margin = inter_margin
        self.inter_classes = inter_classes
        self.ignore_value = ignore_value
        self.loss_weights = weights

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes):
        ccs = cfg.MODEL.CCS
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "tau": ccs.INIT_TEMPERATURE,
            "coarse_scale": ccs.COARSE_SCALE,
            "presence_gating": ccs.PRESENCE_GATING,
            "pool_stride": ccs.POOL_STRIDE,
            "intra_margin": ccs.INTRA_MARGIN,
            "inter_margin": ccs.INTER_MARGIN,
            "inter_classes": ccs.INTER_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weights": {"coarse": ccs.COARSE_WEIGHT, "intra": ccs.INTRA_WEIGHT, "inter": ccs.INTER_WEIGHT},
        }

    @property
    def scale(self) -> torch.Tensor:
        """The output logit scale s (a 0-dim tensor), ``exp(log_scale)`` clamped to [1, 100]."""
        return self.log_scale.exp().clamp(*SCALE_RANGE)

    def forward(self, features: torch.Tensor, targets: Optional[torch.Tensor] = None, prototypes: Optional[torch.Tensor] = None):
        """
        Args:
            features: (B, C, h, w) pixel features.
            targets: (B, H, W) int64 labels (training only), usually at the padded input size (a multiple of
                h x w); ``ignore_value`` = unlabelled.
            prototypes: None (centres = ``conv.weight``) or (B, K, C) per-image initial centres.
        Returns:
            logits (B, K, h, w) and a dict of weighted ``loss_ccs_*`` terms (empty in inference or without targets).
        """
        b, c = features.shape[:2]
        k = self.conv.out_channels
        if prototypes is None:
            centres = self.conv.weight.reshape(1, k, c).expand(b, k, c)
        elif tuple(prototypes.shape) != (b, k, c):
            raise ValueError(f"CCSClassifier: prototypes must be (B, K, C) = {(b, k, c)} (K = MODEL.SEM_SEG_HEAD.NUM_CLASSES), got {tuple(prototypes.shape)}")
        else:
            centres = prototypes
        base = F.normalize(centres, dim=-1, eps=_EPS)
        pixels = F.normalize(features, dim=1, eps=_EPS)
        if self.pool_stride > 1:
            coarse_pixels = F.normalize(F.avg_pool2d(features, self.pool_stride, ceil_mode=True), dim=1, eps=_EPS)
        else:
            coarse_pixels = pixels
        coarse = self.coarse_scale * torch.einsum("bkc,bchw->bkhw", base, coarse_pixels)
        adapted = scene_adaptive_centres(base, coarse.flatten(2), coarse_pixels.flatten(2), self.fusion, self.gate, self.presence_gating)
        similarity = torch.einsum("bkc,bchw->bkhw", F.normalize(adapted, dim=-1, eps=_EPS), pixels)
        logits = self.scale * similarity + self.conv.bias[None, :, None, None]
        if not self.training or targets is None:
            return logits, {}
        return logits, self.losses(coarse, similarity, adapted, targets)

    def losses(self, coarse: torch.Tensor, similarity: torch.Tensor, centres: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted CCS training losses (everything except the main CE of the logits, which is the head's).

        * coarse: CE of the coarse logits, bilinearly upsampled (align_corners=False, as the head) to the
          label size, averaged over labelled pixels; keeps ``W`` a classifier so the attention makes sense.
        * intra: :func:`intra_class_loss` on the pixel-to-centre cosines with the labels nearest-downsampled
          to the feature size (only labelled pixels, hence only classes present in the image).
        * inter: :func:`inter_class_loss` on the adapted centres, over pairs of classes labelled in the
          image ("present") or all pairs ("all"). [our design] presence comes from the dense labels only:
          image-level novel labels (spec §D.1) are not part of the classifier interface, so in weak-shot
          training novel centres are not pushed apart from base ones under "present".

        Args:
            coarse: (B, K, h', w') coarse logits (h' = ceil(h / pool_stride)).
            similarity: (B, K, h, w) pixel-to-adapted-centre cosines.
            centres: (B, K, C) adapted centres.
            targets: (B, H, W) int64 labels.
        Returns:
            dict ``loss_ccs_<term>`` -> weighted scalar for the terms with a non-zero weight.
        """
        weights = self.loss_weights
        terms = {}
        with torch.autocast(device_type=targets.device.type, enabled=False):
            if weights["coarse"]:
                up = F.interpolate(coarse.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
                labelled = (targets != self.ignore_value).sum().clamp(min=1)
                terms["coarse"] = F.cross_entropy(up, targets, ignore_index=self.ignore_value, reduction="sum") / labelled
            if weights["intra"]:
                small = downsample_labels(targets, similarity.shape[-2:])
                terms["intra"] = intra_class_loss(similarity.float(), small, self.intra_margin, self.ignore_value)
            if weights["inter"]:
                if self.inter_classes == "present":
                    classes = present_classes(targets, centres.shape[1], self.ignore_value)
                else:
                    classes = torch.ones(centres.shape[:2], dtype=torch.bool, device=centres.device)
                terms["inter"] = inter_class_loss(centres.float(), classes, self.inter_margin)
        return {f"loss_ccs_{name}": value * weights[name] for name, value in terms.items()}
