"""PIXEL_DECODER_REGISTRY and its builder."""
from detectron2.utils.registry import Registry

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders: backbone features -> per-pixel embedding. Called as ``cls(cfg, input_shape)`` through
``from_config``. ``forward_features(features)`` returns ``(mask_features (B, D, H/4, W/4),
transformer_encoder_features or None, multi_scale_features list)``.
"""


def build_pixel_decoder(cfg, input_shape):
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r}: the class has no forward_features(features)")
    return model
