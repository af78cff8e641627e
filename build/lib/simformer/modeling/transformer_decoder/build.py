"""TRANSFORMER_DECODER_REGISTRY and its builder."""
from detectron2.utils.registry import Registry

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Query decoders of the mask-classification head. Called as ``cls(cfg, in_channels, mask_classification=True)``
through ``from_config``; ``forward(x, mask_features, mask=None)`` returns a dict with ``pred_logits``
(B, Q, K+1), ``pred_masks`` (B, Q, H', W') and ``aux_outputs`` (list of such dicts, one per earlier layer).
"""


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
