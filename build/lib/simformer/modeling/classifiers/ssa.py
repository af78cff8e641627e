"""detectron2 glue of SSA-Seg's adaptive classifier (ssa_adapter): "SSAClassifier" in CLASSIFIER_REGISTRY.

The head's 1x1 classifier is kept: its weight (K, C) and bias (K,) are SSA's fixed prototypes and give
the coarse mask; ``ssa_adapter.SSAClassifier`` turns them into adaptive prototypes and cosine logits.
Selected by ``MODEL.SEM_SEG_HEAD.CLASSIFIER_NAME: "SSAClassifier"`` (per-pixel head) or
``MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME: "SSAClassifier"`` (the mask-classification model's pixel
classification layer, which passes per-image prototypes built from the queries, spec §9.2 "B2");
options under ``MODEL.SSA``.
"""
from typing import Mapping, Optional

import torch.nn as nn
from detectron2.config import configurable

import ssa_adapter

from .build import CLASSIFIER_REGISTRY, PrototypeSlot

__all__ = ["SSAClassifier"]

SEMANTIC_UPDATES = ("replace", "residual")  # MODEL.SSA.SEMANTIC_UPDATE
DISTILL_CLASSES = ("all", "present")  # MODEL.SSA.DISTILL_CLASSES


@CLASSIFIER_REGISTRY.register()
class SSAClassifier(PrototypeSlot, nn.Module):
    """(B, C, h, w) features -> (B, K, h, w) SSA logits; in training with targets, also the weighted
    ``loss_ssa_*`` terms (coarse CE, dice, teacher CE / dice, response / semantic / spatial distillation).

    State-dict keys: ``conv.*`` (the kept 1x1 classifier, same names as ``LinearClassifier``, so a
    per-pixel baseline checkpoint initialises it), ``ssa.*`` (inference), ``ssa.teacher.*`` (training only;
    absent with ``MODEL.SSA.TEACHER: False`` and dropped when loading into such a model).
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        tau: float = 15.0,
        dropout: float = 0.0,
        with_teacher: bool = True,
        ignore_value: int = 255,
        boundary_width: int = 3,
        boundary_border: int = 0,
        kd_smooth: float = 0.5,
        loss_weights: Mapping[str, float] = None,
        semantic_gate: Optional[float] = None,
        position_basis: str = "learned",
        distill_present_only: bool = False,
    ):
        """
        Args:
            in_channels: C. num_classes: K.
            Others: see ``ssa_adapter.SSAClassifier``.
        """
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, 0, 0.01)  # mmseg's conv_seg initialisation (spec §1)
        nn.init.constant_(self.conv.bias, 0)
        self.ssa = ssa_adapter.SSAClassifier(
            in_channels,
            num_classes,
            tau=tau,
            dropout=dropout,
            with_teacher=with_teacher,
            ignore_value=ignore_value,
            boundary_width=boundary_width,
            boundary_border=boundary_border,
            kd_smooth=kd_smooth,
            loss_weights=loss_weights,
            semantic_gate=semantic_gate,
            position_basis=position_basis,
            distill_present_only=distill_present_only,
        )

    @classmethod
    def from_config(cls, cfg, in_channels, num_classes):
        ssa = cfg.MODEL.SSA
        if ssa.SEMANTIC_UPDATE not in SEMANTIC_UPDATES:
            raise ValueError(f"MODEL.SSA.SEMANTIC_UPDATE must be one of {SEMANTIC_UPDATES}, got {ssa.SEMANTIC_UPDATE!r}")
        if ssa.POSITION_BASIS not in ssa_adapter.classifier.POSITION_BASES:
            raise ValueError(f"MODEL.SSA.POSITION_BASIS must be one of {ssa_adapter.classifier.POSITION_BASES}, got {ssa.POSITION_BASIS!r}")
        if ssa.DISTILL_CLASSES not in DISTILL_CLASSES:
            raise ValueError(f"MODEL.SSA.DISTILL_CLASSES must be one of {DISTILL_CLASSES}, got {ssa.DISTILL_CLASSES!r}")
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "tau": ssa.TAU,
            "dropout": ssa.DROPOUT,
            "with_teacher": ssa.TEACHER,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "boundary_width": ssa.BOUNDARY_WIDTH,
            "boundary_border": ssa.BOUNDARY_BORDER,
            "kd_smooth": ssa.KD_SMOOTH,
            "loss_weights": {
                "coarse": ssa.COARSE_WEIGHT,
                "dice": ssa.DICE_WEIGHT,
                "teacher_ce": ssa.TEACHER_CE_WEIGHT,
                "teacher_dice": ssa.TEACHER_DICE_WEIGHT,
                "rd": ssa.RD_WEIGHT,
                "sd": ssa.SD_WEIGHT,
                "pd": ssa.PD_WEIGHT,
            },
            "semantic_gate": ssa.SEMANTIC_GATE_INIT if ssa.SEMANTIC_UPDATE == "residual" else None,
            "position_basis": ssa.POSITION_BASIS,
            "distill_present_only": ssa.DISTILL_CLASSES == "present",
        }

    def forward(self, features, targets=None, prototypes=None):
        """
        Args:
            features: (B, C, h, w) pixel features.
            targets: (B, H, W) int64 ground truth (training only), usually at the padded input size;
                ignore = ``ignore_value`` (weak-shot novel pixels are ignore, so they get no teacher target).
            prototypes: None = the kept 1x1 classifier's weight (K, C) is W; or (B, K, C) per-image class
                prototypes (e.g. pooled from the query mask-embeddings). ``conv.bias`` always biases the
                coarse mask.
        Returns:
            logits (B, K, h, w) and a dict of weighted SSA losses (empty in inference or without targets).
        """
        k, c = self.conv.weight.shape[:2]
        if prototypes is None:
            # reshape, not squeeze: the official squeeze() breaks for K = 1 or C = 1 (spec §8.2.6)
            prototypes = self.conv.weight.reshape(k, c)
        logits, aux = self.ssa(features, prototypes, self.conv.bias)
        if not self.training or targets is None:
            return logits, {}
        return logits, self.ssa.losses(logits, aux, targets)
