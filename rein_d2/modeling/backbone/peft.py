"""Registry of parameter-efficient refinements attached between a VFM's blocks.

A new method is a module with `forward(tokens [B, N, C], layer, num_prefix_tokens=0) -> [B, N, C]`
(returning the first `num_prefix_tokens`, the class and register tokens, unchanged) and
`queries() -> Tensor | None`, plus a factory registered here under the name that
MODEL.REIN.NAME selects.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn

from ...errors import ConfigKeyError
from .. import rein

PEFT_REGISTRY = Registry("PEFT")
PEFT_REGISTRY.__doc__ = "Factories (cfg, num_layers, embed_dims, patch_size) -> refinement module."


def _common_kwargs(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> dict:
    r = cfg.MODEL.REIN
    return dict(
        num_layers=num_layers,
        embed_dims=embed_dims,
        patch_size=patch_size,
        query_dims=cfg.MODEL.MASK_FORMER.HIDDEN_DIM,
        token_length=r.TOKEN_LENGTH,
        use_softmax=r.USE_SOFTMAX,
        link_token_to_query=r.LINK_TOKEN_TO_QUERY,
        scale_init=r.SCALE_INIT,
        zero_mlp_delta_f=r.ZERO_MLP_DELTA_F,
        share_layers=r.SHARE_LAYERS,
    )


@PEFT_REGISTRY.register()
def Reins(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:  # noqa: N802
    """Full-rank Rein tokens."""
    return rein.Reins(**_common_kwargs(cfg, num_layers, embed_dims, patch_size))


@PEFT_REGISTRY.register()
def LoRAReins(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:  # noqa: N802
    """Low-rank Rein tokens (the paper's default, rank MODEL.REIN.LORA_DIM)."""
    return rein.LoRAReins(lora_dim=cfg.MODEL.REIN.LORA_DIM, **_common_kwargs(cfg, num_layers, embed_dims, patch_size))


def build_peft(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:
    name = cfg.MODEL.REIN.NAME
    if name not in PEFT_REGISTRY:
        known = ", ".join(sorted(k for k, _ in PEFT_REGISTRY))
        raise ConfigKeyError(f"MODEL.REIN.NAME={name!r} is not registered in PEFT_REGISTRY; registered: {known}")
    return PEFT_REGISTRY.get(name)(cfg, num_layers, embed_dims, patch_size)
