"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck adapter parallel to every block's MLP branch.

Placement as in the official code (ShoufaChen/AdaptFormer, `ffn_option="parallel"`): the adapter
reads the MLP branch's input x, the residual stream after attention, before `norm2`, and its output
is added next to the branch, outside its layer scale and drop-path:

    x = x + attn-branch;  x = x + ls2 * mlp(norm2(x)) + scale * up(dropout(relu(down(x))))

with the official image-classification settings: no LayerNorm in the adapter, a fixed scale 0.1,
dropout 0.1 after the ReLU, and the "lora" initialisation (down kaiming-uniform, its bias and all of
up zero: the model starts as the frozen backbone). A pre-hook on `norm2` keeps x; the block's
output step adds the adapter's output to the block's output, so any timm block of the pre-norm
form `x + mlp(norm2(x))` takes it (ViT, EVA, SAM) without changing the VFM's modules; post-norm
blocks (`x + norm2(mlp(x))`) are refused.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError


class Adapter(nn.Module):
    """scale * up_proj(dropout(relu(down_proj(x)))), zero at initialisation (official names)."""

    def __init__(self, embed_dims: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.down_proj = nn.Linear(embed_dims, bottleneck)  # nn.Linear's init is kaiming-uniform(a=sqrt(5))
        self.up_proj = nn.Linear(bottleneck, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        for tensor in (self.down_proj.bias, self.up_proj.weight, self.up_proj.bias):
            nn.init.zeros_(tensor)

    def forward(self, x: Tensor) -> Tensor:
        return self.up_proj(self.dropout(F.relu(self.down_proj(x)))) * self.scale


class AdaptFormer(nn.Module):
    """One adapter per block, parallel to its MLP branch."""

    def __init__(self, num_layers: int, embed_dims: int, bottleneck: int = 64, scale: float = 0.1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.adapters = nn.ModuleList(Adapter(embed_dims, bottleneck, scale, dropout) for _ in range(num_layers))
        # Each running block's MLP-branch input, from its norm2 pre-hook until its output step.
        self._branch_inputs: dict[int, Tensor] = {}

    def attach(self, blocks: Sequence[nn.Module]) -> None:
        """A pre-hook on each block's norm2 keeps the MLP branch's input, one on its mlp checks that norm2
        ran first (a post-norm block, x + norm2(mlp(x)), would hand norm2 the MLP's output); called once,
        at build time."""
        for layer, block in enumerate(blocks):
            norm, mlp = getattr(block, "norm2", None), getattr(block, "mlp", None)
            if not isinstance(norm, nn.Module) or not isinstance(mlp, nn.Module):
                raise ConfigError(f"AdaptFormer: block {layer} ({type(block).__name__}) has no norm2 and mlp, the "
                                  "pre-norm MLP branch x + mlp(norm2(x)) its adapter runs parallel to")
            norm.register_forward_pre_hook(functools.partial(self._keep_branch_input, layer))
            mlp.register_forward_pre_hook(functools.partial(self._check_pre_norm, layer, type(block).__name__))

    def _keep_branch_input(self, layer: int, norm: nn.Module, args: tuple) -> None:
        self._branch_inputs[layer] = args[0]

    def _check_pre_norm(self, layer: int, block_type: str, mlp: nn.Module, args: tuple) -> None:
        if layer not in self._branch_inputs:
            raise ConfigError(f"AdaptFormer: block {layer} ({block_type}) runs its mlp before norm2 (a post-norm "
                              "block); the adapter needs the pre-norm MLP branch x + mlp(norm2(x))")

    def forward(self, tokens: Tensor, layer: int, num_prefix_tokens: int = 0) -> Tensor:
        """Block `layer`'s output plus its adapter's output on the MLP branch's input (every token,
        class and register tokens included, as in the official code)."""
        branch_input = self._branch_inputs.pop(layer, None)
        if branch_input is None:
            raise ConfigError(f"AdaptFormer: block {layer} finished without running its norm2, so the adapter has "
                              "no MLP-branch input; it needs blocks of the form x + mlp(norm2(x))")
        return tokens + self.adapters[layer](branch_input).reshape(tokens.shape)

    def queries(self) -> Tensor | None:
        """AdaptFormer has no tokens for Mask2Former's queries."""
        return None
