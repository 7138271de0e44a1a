"""Backbones: timm VFMs with a parameter-efficient refinement (Rein) between their blocks."""
from .peft import PEFT_REGISTRY, build_peft
from .vit import ReinViT, create_timm_vfm

__all__ = ["PEFT_REGISTRY", "ReinViT", "build_peft", "create_timm_vfm"]
