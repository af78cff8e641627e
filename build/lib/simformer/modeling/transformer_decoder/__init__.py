from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .masked_attention import MaskedAttentionTransformerDecoder
from .standard import StandardTransformerDecoder

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder", "StandardTransformerDecoder", "MaskedAttentionTransformerDecoder"]
