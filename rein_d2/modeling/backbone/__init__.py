"""Backbones: timm VFMs with a parameter-efficient refinement (Rein) between their blocks."""
from .cnn import ReinCNN
from .fpn import build_rein_vit_fpn_backbone
from .peft import PEFT_REGISTRY, build_peft
from .vit import ReinViT, create_timm_vfm

__all__ = ["PEFT_REGISTRY", "ReinCNN", "ReinViT", "build_peft", "build_rein_vit_fpn_backbone", "create_timm_vfm"]
