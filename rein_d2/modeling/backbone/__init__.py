"""Backbones: timm VFMs with a parameter-efficient refinement (Rein) between their blocks."""
from .cnn import ReinCNN
from .peft import PEFT_REGISTRY, build_peft
from .vit import ReinViT, create_timm_vfm

__all__ = ["PEFT_REGISTRY", "ReinCNN", "ReinViT", "build_peft", "create_timm_vfm"]
