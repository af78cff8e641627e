"""The mask-classification segmentation head: pixel decoder + query decoder, both chosen by name."""
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

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
    """

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, num_classes: int, pixel_decoder: nn.Module, transformer_predictor: nn.Module, transformer_in_feature: str):
        super().__init__()
        self.num_classes = num_classes
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.multi_scale_predictor = getattr(transformer_predictor, "uses_multi_scale", False)

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
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_decoder(cfg, in_channels, mask_classification=True),
            "transformer_in_feature": in_feature,
        }

    def forward(self, features):
        mask_features, encoder_features, multi_scale_features = self.pixel_decoder.forward_features(features)
        x = encoder_features if self.transformer_in_feature == "transformer_encoder" else features[self.transformer_in_feature]
        if self.multi_scale_predictor:
            out = self.predictor(x, mask_features, multi_scale_features=multi_scale_features)
        else:
            out = self.predictor(x, mask_features)
        out["mask_features"] = mask_features
        return out
