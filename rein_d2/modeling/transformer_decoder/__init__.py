"""Transformer decoders of Mask2Former; importing this registers them."""
from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder, check_num_classes
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
    "build_transformer_decoder",
    "check_num_classes",
]
