"""MaskFormer-style meta-architecture: backbone -> pixel decoder -> query decoder -> per-query class + mask.

Data contract (detectron2): ``forward(batched_inputs)`` takes a list of dicts with
  image     (3, H, W) uint8 tensor in ``INPUT.FORMAT`` channel order,
  instances (training) ``Instances`` with gt_classes (T,), gt_masks (T, H, W) bool, optional gt_has_mask (T,),
  height, width (optional) output size.
Training returns a dict of weighted named losses; inference returns, per image, ``{"sem_seg": (K, height, width)}``
scores (argmax = prediction).

With a pixel classification layer in the head (``MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME``, spec §9.2 "B2")
training also passes dense label maps built from the mask targets (targets without a mask, i.e. weak-shot
novel classes, are ignore) to the head, and adds its already-weighted ``pixel_losses`` (``loss_pixel_ce``
and the classifier's terms, e.g. ``loss_ssa_*``; with ``PIXEL_CLASSIFIER.NOVEL_WEIGHT`` > 0 also
``loss_pixel_novel`` for the image-level novel labels) to the set criterion's weighted losses;
``PIXEL_CLASSIFIER.SEMANTIC_MAP`` picks the inference map (:meth:`MaskFormer.semantic_scores`).
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from .inference import postprocess_sem_seg, semantic_inference, upsampled_semantic_inference
from .modeling.build_criterion import build_criterion
from .modeling.pixel_classification import SEMANTIC_MAPS, fuse_semantic_maps, label_map_from_targets, novel_tag_region, pixel_class_scores

__all__ = ["MaskFormer"]

# the head outputs :meth:`MaskFormer.semantic_scores` reads
SCORE_INPUTS = ("pred_logits", "pred_masks", "pixel_logits")


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    weak_shot = False  # the criterion's weak-shot terms (build_criterion): SimFormer sets it

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        weight_dict: Dict[str, float],
        size_divisibility: int,
        pixel_mean,
        pixel_std,
        semantic_map: str = "maskformer",
        fusion_weight: float = 0.5,
        channels_last: bool = False,
    ):
        """``semantic_map`` / ``fusion_weight``: see :meth:`semantic_scores` (``MODEL.MASK_FORMER.PIXEL_CLASSIFIER``).
        ``channels_last``: hold 4-D weights and feed the backbone in NHWC memory format (``MODEL.MASK_FORMER.CHANNELS_LAST``)."""
        super().__init__()
        if semantic_map not in SEMANTIC_MAPS:
            raise ValueError(f"MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP must be one of {SEMANTIC_MAPS}, got {semantic_map!r}")
        if semantic_map != "maskformer" and getattr(sem_seg_head, "pixel_classifier", None) is None:
            raise ValueError(f"MODEL.MASK_FORMER.PIXEL_CLASSIFIER.SEMANTIC_MAP={semantic_map!r} needs a pixel classifier: set MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME")
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError(f"MODEL.MASK_FORMER.PIXEL_CLASSIFIER.FUSION_WEIGHT must be in [0, 1], got {fusion_weight}")
        self.semantic_map = semantic_map
        self.fusion_weight = fusion_weight
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.weight_dict = dict(weight_dict)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # 4-D parameters / buffers only; later .to(device) keeps it

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        mf = cfg.MODEL.MASK_FORMER
        criterion, weight_dict = build_criterion(cfg, weak_shot=cls.weak_shot)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "weight_dict": weight_dict,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_map": mf.PIXEL_CLASSIFIER.SEMANTIC_MAP,
            "fusion_weight": mf.PIXEL_CLASSIFIER.FUSION_WEIGHT,
            "channels_last": mf.CHANNELS_LAST,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

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
        if not self.training:
            outputs = self.sem_seg_head(features)
            # free the backbone maps and the head outputs the scores do not read before the (K, H, W) score maps
            del features
            outputs = {k: outputs[k] for k in SCORE_INPUTS if k in outputs}
            return self.inference(outputs, images, batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise KeyError("MaskFormer training needs 'instances' in each input dict (use a training mapper)")
        targets = self.prepare_targets(batched_inputs, images)
        head = self.sem_seg_head
        if getattr(head, "pixel_classifier", None) is not None:
            novel = novel_tag_region(targets, head.num_classes) if head.pixel_novel_weight > 0 else (None, None)
            outputs = head(features, label_map_from_targets(targets, head.ignore_value), *novel)
        else:
            outputs = self.sem_seg_head(features)
        losses = self.criterion(outputs, targets)
        weighted = {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}
        pixel_losses = outputs.get("pixel_losses", {})  # already weighted by the head / classifier
        clash = set(pixel_losses) & set(weighted)
        if clash:
            raise KeyError(f"pixel-classifier loss names {sorted(clash)} clash with the criterion's")
        return {**weighted, **pixel_losses}

    def semantic_scores(self, outputs: Dict, size) -> torch.Tensor:
        """Head outputs -> (B, K, H, W) per-class scores at ``size`` (the padded input size); argmax = prediction.

        ``semantic_map``: "maskformer" = sum_q softmax(z_q)_k sigmoid(m_q); "pixel" = softmax over classes of
        the pixel classifier's upsampled logits; "fusion" = maskformer^(1 - w) * pixel^w with
        w = ``fusion_weight`` (:func:`fuse_semantic_maps`).
        """
        if self.semantic_map == "pixel":
            return pixel_class_scores(outputs["pixel_logits"], size)
        if torch.jit.is_tracing() or torch.compiler.is_compiling():  # export: the size-generic formula
            mask_pred = F.interpolate(outputs["pred_masks"], size=size, mode="bilinear", align_corners=False)
            scores = semantic_inference(outputs["pred_logits"], mask_pred)
        else:  # the same scores, in row bands (lower peak memory)
            scores = upsampled_semantic_inference(outputs["pred_logits"], outputs["pred_masks"], size)
        if self.semantic_map == "fusion":
            return fuse_semantic_maps(scores, pixel_class_scores(outputs["pixel_logits"], size), self.fusion_weight)
        return scores

    def inference(self, outputs: Dict, images: ImageList, batched_inputs: List[Dict]) -> List[Dict]:
        """Per image ``{"sem_seg": (K, height, width)}``; the scores are formed in fp32 (autocast off: a
        softmax and a sum over queries at every pixel)."""
        with torch.autocast(device_type=images.tensor.device.type, enabled=False):
            scores = self.semantic_scores(self._float_outputs(outputs), images.tensor.shape[-2:])  # (B, K, H_pad, W_pad)
        results = []
        for score, x, image_size in zip(scores, batched_inputs, images.image_sizes):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            results.append({"sem_seg": postprocess_sem_seg(score, image_size, height, width)})
        return results

    @staticmethod
    def _float_outputs(outputs: Dict) -> Dict:
        """Head outputs with their floating tensors (top level) in float32, for fp32 inference under autocast."""
        return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in outputs.items()}

    @torch.no_grad()
    def padded_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, padded images (B, 3, H, W) (H, W multiples of ``size_divisibility``) -> (B, K, H, W)
        scores, as :meth:`inference` forms them before cropping; the seam for sliding-window inference."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        outputs = self.sem_seg_head(self.backbone(images))
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.semantic_scores(self._float_outputs(outputs), images.shape[-2:])
