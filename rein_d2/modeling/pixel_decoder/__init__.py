"""Pixel decoders of Mask2Former; importing this registers them in SEM_SEG_HEADS_REGISTRY."""
from .build import build_pixel_decoder, registered_pixel_decoders
from .ms_deform_attn import MSDeformAttn, ms_deform_attn
from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = [
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "build_pixel_decoder",
    "ms_deform_attn",
    "registered_pixel_decoders",
]
