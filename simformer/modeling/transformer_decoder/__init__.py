from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .standard import StandardTransformerDecoder

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder", "StandardTransformerDecoder"]
