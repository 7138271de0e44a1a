"""VPT-deep (Jia et al., ECCV 2022): learnable prompt tokens in the input of every block.

As the official code (KMnP/vpt, `PromptedTransformer`) does, each block gets its own prompts,
placed right after the prefix (class, register) tokens and before the patch tokens; the prompts a
block outputs are dropped and the next block's put in their place. Here they are taken out after
every block, so the sequence between blocks, and every feature the head reads, is the VFM's.
Initialisation as the official "random" one: uniform in +-sqrt(6 / (3 * patch_area + dim)), and
dropout on the prompts (the official default 0.0).

Prompts have no position: attention modules that keep the leading `num_prefix_tokens` out of their
rotary position embedding (timm's EVA, DINOv3) count the prompts among them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError


class VPT(nn.Module):
    """`num_tokens` prompts per block, in its input only."""

    def __init__(self, num_layers: int, embed_dims: int, patch_size: int, num_tokens: int = 150,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"VPT needs at least one prompt token per block, got {num_tokens}")
        self.num_layers = num_layers
        self.num_tokens = num_tokens
        self.prompt_tokens = nn.Parameter(torch.empty(num_layers, num_tokens, embed_dims))
        bound = math.sqrt(6.0 / (3 * patch_size * patch_size + embed_dims))
        nn.init.uniform_(self.prompt_tokens, -bound, bound)
        self.prompt_dropout = nn.Dropout(dropout)

    def attach(self, blocks: Sequence[nn.Module]) -> None:
        """The prompts join the prefix tokens of every module in the blocks that sets prefix tokens
        apart (from rotary position embeddings); called once, at build time."""
        for block in blocks:
            for module in block.modules():
                if isinstance(getattr(module, "num_prefix_tokens", None), int):
                    module.num_prefix_tokens += self.num_tokens

    def before_block(self, tokens: Tensor, layer: int, num_prefix_tokens: int = 0) -> Tensor:
        """[B, P + N, C] -> [B, P + num_tokens + N, C]: block `layer`'s prompts after the P prefix tokens."""
        prompts = self.prompt_dropout(self.prompt_tokens[layer]).to(tokens.dtype)
        prompts = prompts.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat((tokens[:, :num_prefix_tokens], prompts, tokens[:, num_prefix_tokens:]), dim=1)

    def forward(self, tokens: Tensor, layer: int, num_prefix_tokens: int = 0) -> Tensor:
        """Block `layer`'s output without its prompts."""
        return torch.cat((tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens + self.num_tokens:]), dim=1)

    def queries(self) -> Tensor | None:
        """VPT's prompts are not linked to Mask2Former's queries."""
        return None
