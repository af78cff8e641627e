"""SimFormer meta-architecture: MaskFormer trained with weak-shot targets and SimFormer's losses.

Same network and inference as :class:`MaskFormer`; the criterion adds the complementary loss and, for
batches of image pairs (``PairDatasetMapper``: each input dict carries its partner under ``"pair"``),
SimNet's base pixel-pair loss and the similarity distillation (spec §4). Pairs are flattened to the
batch [A1, B1, A2, B2, ...], so ``SOLVER.IMS_PER_BATCH`` counts pairs and any number of pairs per device
works. The optional pixel contrast (``MODEL.SIMFORMER.PIXEL_CONTRAST``) adds a training-only projection head
in the criterion and ``loss_pixel_contrast`` for any batch. With every SimFormer weight at 0 this is
MaskFormer (used for the oracle, base-only and retraining stages).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from .model import MaskFormer
from .modeling.build_criterion import STUDENT_PAIRS
from .modeling.loss_terms import weakshot_metadata

__all__ = ["SimFormer", "STUDENT_PAIRS"]


@META_ARCH_REGISTRY.register()
class SimFormer(MaskFormer):
    weak_shot = True  # build_criterion adds the terms MODEL.SIMFORMER turns on

    @configurable
    def __init__(self, *, ignore_label: int = 255, **kwargs):
        """``ignore_label``: the training data's ignore value (padding of ``sem_seg_raw``); the rest as
        :class:`MaskFormer`."""
        super().__init__(**kwargs)
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["ignore_label"] = weakshot_metadata(cfg)[1]
        return ret

    @staticmethod
    def flatten_pairs(batched_inputs: List[Dict]) -> List[Dict]:
        """[A1{pair: B1}, A2{pair: B2}, ...] -> [A1, B1, A2, B2, ...]; unpaired batches pass through."""
        paired = ["pair" in x for x in batched_inputs]
        if not any(paired):
            return batched_inputs
        if not all(paired):
            raise ValueError("SimFormer: a batch mixes paired and unpaired inputs")
        return [y for x in batched_inputs for y in (x, x["pair"])]

    def prepare_targets(self, batched_inputs: List[Dict], images) -> List[Dict]:
        """MaskFormer's targets plus ``sem_seg_raw`` (H_pad, W_pad) int64 and ``pad`` (H_pad, W_pad) bool."""
        targets = super().prepare_targets(batched_inputs, images)
        h_pad, w_pad = images.tensor.shape[-2:]
        ignore = self.ignore_label
        for t, x in zip(targets, batched_inputs):
            raw = x.get("sem_seg_raw", x.get("sem_seg"))
            if raw is None:
                raise KeyError("SimFormer training needs 'sem_seg' (or 'sem_seg_raw') in each input dict")
            h, w = raw.shape
            full = torch.full((h_pad, w_pad), ignore, dtype=torch.int64, device=self.device)
            full[:h, :w] = raw.to(self.device)
            pad = torch.ones((h_pad, w_pad), dtype=torch.bool, device=self.device)
            pad[:h, :w] = x["pad_mask"].to(self.device) if "pad_mask" in x else False
            t["sem_seg_raw"], t["pad"] = full, pad
        return targets

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            batched_inputs = self.flatten_pairs(batched_inputs)
        elif any("pair" in x for x in batched_inputs):
            raise ValueError("SimFormer inference takes single images, got paired inputs")
        return super().forward(batched_inputs)
