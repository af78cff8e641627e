"""The mask-classification segmentation head: pixel decoder + query decoder (+ optional pixel classifier), chosen by name."""
from typing import Dict, Optional

import torch

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from .classifiers import CLASSIFIER_REGISTRY
from .pixel_classification import PIXEL_PROTOTYPES, query_class_prototypes, tagged_region_loss
from .pixel_decoder import build_pixel_decoder
from .transformer_decoder import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder

__all__ = ["MaskFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """features -> dict(pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4), aux_outputs, mask_features (B, D, H/4, W/4)).

    The query decoder attends to ``transformer_in_feature``: a backbone feature name (e.g. "res5") or
    "transformer_encoder" (the output of ``TransformerEncoderPixelDecoder``). A query decoder whose class sets
    ``uses_multi_scale = True`` (e.g. ``MaskedAttentionTransformerDecoder``) is built with
    in_channels = CONVS_DIM and also receives the pixel decoder's multi-scale maps (coarsest first) as the
    keyword argument ``multi_scale_features``.

    Optional pixel classification layer (spec §9.2 "B2", ``MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME``): a
    classifier from CLASSIFIER_REGISTRY classifies ``mask_features`` against per-image class prototypes
    (B, K, C) pooled from the final-layer query mask-embeddings (:func:`query_class_prototypes`), or with
    ``pixel_prototypes="learned"`` against its own class weights (K, C), and adds
    ``pixel_logits`` (B, K, H/4, W/4) to the outputs. Given ``targets`` (B, H, W) in training it also adds
    ``pixel_losses``: ``loss_pixel_ce`` (CE of the logits bilinearly upsampled to the targets' size, times
    ``pixel_ce_weight``) and the classifier's own weighted terms; given the image-level novel labels and
    their region, also ``loss_pixel_novel`` (:func:`tagged_region_loss` times ``pixel_novel_weight``).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
        pixel_classifier: Optional[nn.Module] = None,
        pixel_prototypes: str = "queries",
        pixel_ce_weight: float = 1.0,
        pixel_novel_weight: float = 0.0,
        ignore_value: int = 255,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.multi_scale_predictor = getattr(transformer_predictor, "uses_multi_scale", False)
        if pixel_prototypes not in PIXEL_PROTOTYPES:
            raise ValueError(f"MODEL.MASK_FORMER.PIXEL_CLASSIFIER.PROTOTYPES must be one of {PIXEL_PROTOTYPES}, got {pixel_prototypes!r}")
        self.pixel_classifier = pixel_classifier
        self.pixel_prototypes = pixel_prototypes
        self.pixel_ce_weight = pixel_ce_weight
        self.pixel_novel_weight = pixel_novel_weight
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature == "transformer_encoder":
            if head.PIXEL_DECODER_NAME != "TransformerEncoderPixelDecoder":
                raise ValueError("MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE='transformer_encoder' needs MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME='TransformerEncoderPixelDecoder'")
            in_channels = head.CONVS_DIM
        elif in_feature in input_shape:
            in_channels = input_shape[in_feature].channels
        else:
            raise ValueError(f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={in_feature!r}: expected 'transformer_encoder' or one of {sorted(input_shape)}")
        if getattr(TRANSFORMER_DECODER_REGISTRY.get(cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME), "uses_multi_scale", False):
            in_channels = head.CONVS_DIM  # it attends to the pixel decoder's multi-scale maps
        pc = cfg.MODEL.MASK_FORMER.PIXEL_CLASSIFIER
        if pc.NAME and pc.NAME not in CLASSIFIER_REGISTRY:
            raise KeyError(f"MODEL.MASK_FORMER.PIXEL_CLASSIFIER.NAME={pc.NAME!r} is not in CLASSIFIER_REGISTRY ({sorted(k for k, _ in CLASSIFIER_REGISTRY)})")
        pixel_classifier = CLASSIFIER_REGISTRY.get(pc.NAME)(cfg, head.MASK_DIM, head.NUM_CLASSES) if pc.NAME else None
        if pixel_classifier is not None and pc.PROTOTYPES == "queries":
            pixel_classifier.expect_prototypes()  # the per-image prototypes replace its own class weights
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_decoder(cfg, in_channels, mask_classification=True),
            "transformer_in_feature": in_feature,
            "pixel_classifier": pixel_classifier,
            "pixel_prototypes": pc.PROTOTYPES,
            "pixel_ce_weight": pc.CE_WEIGHT,
            "pixel_novel_weight": pc.NOVEL_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
        }

    def forward(self, features, targets: Optional[torch.Tensor] = None, novel_tags: Optional[torch.Tensor] = None, novel_region: Optional[torch.Tensor] = None):
        """
        Args:
            features: backbone features by name.
            targets: optional (B, H, W) int64 label maps at the padded input size (training with a pixel
                classifier; ignore = ``ignore_value``, which includes weak-shot novel pixels).
            novel_tags, novel_region: optional (B, K) bool image-level novel labels and (B, H, W) bool region
                they may occupy (:func:`~simformer.modeling.pixel_classification.novel_tag_region`).
        Returns:
            dict: pred_logits, pred_masks, mask_embed (B, Q, C), aux_outputs (training), mask_features, and
            with a pixel classifier pixel_logits (B, K, H/4, W/4) and, given targets, pixel_losses.
        """
        mask_features, encoder_features, multi_scale_features = self.pixel_decoder.forward_features(features)
        x = encoder_features if self.transformer_in_feature == "transformer_encoder" else features[self.transformer_in_feature]
        if self.multi_scale_predictor:
            out = self.predictor(x, mask_features, multi_scale_features=multi_scale_features)
        else:
            out = self.predictor(x, mask_features)
        out["mask_features"] = mask_features
        if self.pixel_classifier is not None:
            prototypes = query_class_prototypes(out["pred_logits"], out["mask_embed"]) if self.pixel_prototypes == "queries" else None
            logits, losses = self.pixel_classifier(mask_features, targets, prototypes)
            out["pixel_logits"] = logits
            if targets is not None:
                up = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
                ce = F.cross_entropy(up, targets, ignore_index=self.ignore_value, reduction="sum") / (targets != self.ignore_value).sum().clamp(min=1)
                out["pixel_losses"] = {"loss_pixel_ce": ce * self.pixel_ce_weight, **losses}
                if novel_tags is not None:
                    out["pixel_losses"]["loss_pixel_novel"] = tagged_region_loss(up, novel_tags, novel_region) * self.pixel_novel_weight
        return out
