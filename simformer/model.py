"""MaskFormer-style meta-architecture: backbone -> pixel decoder -> query decoder -> per-query class + mask.

Data contract (detectron2): ``forward(batched_inputs)`` takes a list of dicts with
  image     (3, H, W) uint8 tensor in ``INPUT.FORMAT`` channel order,
  instances (training) ``Instances`` with gt_classes (T,), gt_masks (T, H, W) bool, optional gt_has_mask (T,),
  height, width (optional) output size.
Training returns a dict of weighted named losses; inference returns, per image, ``{"sem_seg": (K, height, width)}``
scores (argmax = prediction).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from .inference import postprocess_sem_seg, semantic_inference
from .modeling.criterion import SetCriterion
from .modeling.matcher import HungarianMatcher

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    @configurable
    def __init__(self, *, backbone: Backbone, sem_seg_head: nn.Module, criterion: nn.Module, weight_dict: Dict[str, float], size_divisibility: int, pixel_mean, pixel_std):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.weight_dict = dict(weight_dict)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        mf = cfg.MODEL.MASK_FORMER
        matcher = HungarianMatcher(cost_class=mf.COST_CLASS, cost_focal=mf.COST_FOCAL, cost_dice=mf.COST_DICE, cost_class_no_mask=mf.COST_CLASS_NO_MASK)
        weight_dict = {"loss_ce": mf.CLASS_WEIGHT, "loss_focal": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        if mf.DEEP_SUPERVISION:
            weight_dict.update({f"{k}_{i}": v for i in range(mf.DEC_LAYERS - 1) for k, v in list(weight_dict.items())})
        criterion = SetCriterion(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, matcher, eos_coef=mf.NO_OBJECT_WEIGHT)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "weight_dict": weight_dict,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Per image: labels (T,), masks (T, H_pad, W_pad) float zero-padded to the batch size, has_mask (T,)."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            masks = inst.gt_masks
            masks = masks.tensor if hasattr(masks, "tensor") else masks
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad), dtype=torch.float32)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            has_mask = inst.gt_has_mask if inst.has("gt_has_mask") else torch.ones(len(inst), dtype=torch.bool, device=self.device)
            targets.append({"labels": inst.gt_classes, "masks": padded, "has_mask": has_mask})
        return targets

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)
        if self.training:
            if "instances" not in batched_inputs[0]:
                raise KeyError("MaskFormer training needs 'instances' in each input dict (use a training mapper)")
            losses = self.criterion(outputs, self.prepare_targets(batched_inputs, images))
            return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}
        return self.inference(outputs, images, batched_inputs)

    def semantic_scores(self, outputs: Dict, size) -> torch.Tensor:
        """Head outputs -> (B, K, H, W) per-class scores at ``size`` (the padded input size); argmax = prediction."""
        mask_pred = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False)
        return semantic_inference(outputs["pred_logits"], mask_pred)

    def inference(self, outputs: Dict, images: ImageList, batched_inputs: List[Dict]) -> List[Dict]:
        scores = self.semantic_scores(outputs, images.tensor.shape[-2:])  # (B, K, H_pad, W_pad)
        results = []
        for score, x, image_size in zip(scores, batched_inputs, images.image_sizes):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            results.append({"sem_seg": postprocess_sem_seg(score, image_size, height, width)})
        return results
