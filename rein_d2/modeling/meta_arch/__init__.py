"""Meta-architectures (Mask2Former, a sliding-window SemanticSegmentor) and head; importing registers them."""
from .mask_former_head import MaskFormerHead
from .mask_former_model import MaskFormer, padding_divisor, semantic_inference
from .semantic_fpn import SlidingSemanticSegmentor
from .sliding_window import SlideWindow, slide_inference
from .targets import instance_targets, semantic_targets

__all__ = [
    "MaskFormer",
    "MaskFormerHead",
    "SlideWindow",
    "SlidingSemanticSegmentor",
    "instance_targets",
    "padding_divisor",
    "semantic_inference",
    "semantic_targets",
    "slide_inference",
]
