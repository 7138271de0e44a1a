"""Registry of parameter-efficient refinements attached to a VFM's blocks.

A new method is a module with a `num_layers` attribute (one layer per block that runs), a factory
registered here under the name that MODEL.REIN.NAME selects, and:

- `forward(tokens [B, N, C], layer, num_prefix_tokens=0) -> tokens`: block `layer`'s output, the
  tokens handed to the next block and to the head (Rein refines the patch tokens and returns the
  first `num_prefix_tokens`, the class and register tokens, unchanged);
- `queries() -> Tensor | None`: tokens for Mask2Former's queries (MODEL.REIN.LINK_TOKEN_TO_QUERY);

and, if it needs more of the backbone than the blocks' outputs, either of (ReinViT offers both to
every method; ReinCNN offers neither, see `needs_block_internals`):

- `before_block(tokens, layer, num_prefix_tokens=0) -> tokens`: block `layer`'s input. It may add
  tokens (VPT's prompts) if `forward` takes them out again, so that the features keep their shape;
  blocks that take NHWC maps (SAM) refuse a change of the token count.
- `attach(blocks) -> None`: called once at build time with the blocks that run, to hook into their
  sub-modules (LoRA on the query and value projections, AdaptFormer beside the MLP branch). The
  method keeps its own parameters; the VFM's modules and parameter names stay as they are.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn

from ...errors import ConfigError, ConfigKeyError
from .. import peft_methods, rein

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


def _without_query_link(cfg: CfgNode) -> None:
    """Methods without tokens refuse the query link, which would leave the decoder without queries."""
    if cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY:
        raise ConfigError(f"MODEL.REIN.NAME={cfg.MODEL.REIN.NAME!r} has no tokens to link to Mask2Former's queries: "
                          "set MODEL.REIN.LINK_TOKEN_TO_QUERY False (the decoder then learns its queries)")


@PEFT_REGISTRY.register()
def LoRA(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:  # noqa: N802
    """LoRA on every block's query and value projections (Table 4: rank 8), or those of LORA_PROJECTIONS."""
    _without_query_link(cfg)
    p = cfg.MODEL.PEFT
    return peft_methods.LoRA(num_layers, embed_dims, rank=p.LORA_RANK, alpha=p.LORA_ALPHA, dropout=p.LORA_DROPOUT,
                             projections=p.LORA_PROJECTIONS)


@PEFT_REGISTRY.register()
def AdaptFormer(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:  # noqa: N802
    """AdaptFormer's adapter parallel to every block's MLP (Table 4: bottleneck 64)."""
    _without_query_link(cfg)
    p = cfg.MODEL.PEFT
    return peft_methods.AdaptFormer(num_layers, embed_dims, bottleneck=p.ADAPTFORMER_BOTTLENECK,
                                    scale=p.ADAPTFORMER_SCALE, dropout=p.ADAPTFORMER_DROPOUT)


@PEFT_REGISTRY.register()
def VPT(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:  # noqa: N802
    """VPT-deep: prompt tokens in every block's input (Table 4: 150 per block)."""
    _without_query_link(cfg)
    p = cfg.MODEL.PEFT
    return peft_methods.VPT(num_layers, embed_dims, patch_size, num_tokens=p.VPT_TOKENS, dropout=p.VPT_DROPOUT)


def needs_block_internals(peft: nn.Module) -> bool:
    """Whether a method needs more than the blocks' outputs (`before_block` or `attach`)."""
    return hasattr(peft, "before_block") or hasattr(peft, "attach")


def build_peft(cfg: CfgNode, num_layers: int, embed_dims: int, patch_size: int) -> nn.Module:
    name = cfg.MODEL.REIN.NAME
    if name not in PEFT_REGISTRY:
        known = ", ".join(sorted(k for k, _ in PEFT_REGISTRY))
        raise ConfigKeyError(f"MODEL.REIN.NAME={name!r} is not registered in PEFT_REGISTRY; registered: {known}")
    return PEFT_REGISTRY.get(name)(cfg, num_layers, embed_dims, patch_size)
