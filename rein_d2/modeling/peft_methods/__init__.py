"""The parameter-efficient fine-tuning baselines of the Rein paper's Table 4, in plain PyTorch.

Each attaches to a frozen ViT through the interface documented in `backbone/peft.py`: LoRA and
AdaptFormer hook into sub-modules of every block once (`attach`), VPT adds prompt tokens to every
block's input (`before_block`) and takes them out of its output (`forward`).
"""
from .adaptformer import AdaptFormer
from .lora import LoRA
from .vpt import VPT

__all__ = ["VPT", "AdaptFormer", "LoRA"]
