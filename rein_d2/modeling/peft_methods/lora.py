"""LoRA (Hu et al., ICLR 2022) on the query and value (or query, key and value) projections of a frozen ViT.

timm's attention modules project queries, keys and values either with one fused `qkv` Linear
(DINOv2, CLIP, MAE, SAM: the output's thirds are q, k, v) or with separate `q_proj`, `k_proj`,
`v_proj` Linears (EVA02). Either way a forward hook on the Linear adds the low-rank update
`alpha / rank * B A dropout(x)` to the chosen projections' outputs, so the VFM keeps its modules and
parameter names (its weights files and compact checkpoints still fit) and the update's parameters
live here. B starts at zero: at initialisation the model is exactly the frozen backbone. The
`peft` library wraps whole Linear modules (renaming their weights) and cannot address the q and v
slices of a fused qkv, hence this small module; A is initialised as `peft` does (nn.Linear's
kaiming-uniform), and the defaults are its own (lora_alpha 8, so the scale is 1 at rank 8).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

from torch import Tensor, nn

from ...errors import ConfigError

PROJECTIONS = ("query", "key", "value")  # in the order of a fused qkv's output


class LowRankUpdate(nn.Module):
    """scale * lora_B(lora_A(dropout(x))), zero at initialisation."""

    def __init__(self, in_dims: int, out_dims: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.lora_dropout = nn.Dropout(dropout)
        self.lora_A = nn.Linear(in_dims, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_dims, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def projection_outputs(attn: nn.Module) -> dict[str, tuple[nn.Linear, slice]]:
    """The Linear that computes each of the query, key and value, and the slice of its output that holds it."""
    separate = [getattr(attn, f"{name[0]}_proj", None) for name in PROJECTIONS]
    if all(isinstance(linear, nn.Linear) for linear in separate):
        return {name: (linear, slice(None)) for name, linear in zip(PROJECTIONS, separate)}
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, nn.Linear) and qkv.out_features % 3 == 0:
        width = qkv.out_features // 3
        return {name: (qkv, slice(i * width, (i + 1) * width)) for i, name in enumerate(PROJECTIONS)}
    raise ConfigError(f"LoRA: the attention {type(attn).__name__} has neither q_proj / k_proj / v_proj Linears nor a "
                      "fused qkv Linear, the two layouts of timm's ViTs; LoRA cannot find its projections")


class LoRA(nn.Module):
    """One low-rank update per block of each projection in `projections` (query and value by default)."""

    def __init__(self, num_layers: int, embed_dims: int, rank: int = 8, alpha: float = 8.0,
                 dropout: float = 0.1, projections: Sequence[str] = ("query", "value")) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA needs a rank >= 1, got {rank}")
        unknown = [name for name in projections if name not in PROJECTIONS]
        if unknown or not projections or len(set(projections)) != len(projections):
            raise ConfigError(f"LoRA projections {list(projections)}: name each of {list(PROJECTIONS)} at most once, "
                              "and at least one (MODEL.PEFT.LORA_PROJECTIONS)")
        self.num_layers = num_layers
        self.embed_dims = embed_dims
        self.projections = tuple(projections)
        self.layers = nn.ModuleList(
            nn.ModuleDict({name: LowRankUpdate(embed_dims, embed_dims, rank, alpha, dropout)
                           for name in self.projections})
            for _ in range(num_layers))
        # Blocks whose projections have been updated since the block started (see `forward`).
        self._updated: set[int] = set()

    def attach(self, blocks: Sequence[nn.Module]) -> None:
        """A forward hook on each block's chosen projections (called once, at build time)."""
        for layer, block in enumerate(blocks):
            outputs = projection_outputs(block.attn)
            for name in self.projections:
                linear, out_slice = outputs[name]
                width = len(range(linear.out_features)[out_slice])
                if (linear.in_features, width) != (self.embed_dims, self.embed_dims):
                    raise ConfigError(f"LoRA: block {layer}'s {name} projection maps {linear.in_features} to {width} "
                                      f"channels, but LoRA was built for {self.embed_dims}")
                linear.register_forward_hook(functools.partial(self._add_update, layer, name, out_slice))

    def _add_update(self, layer: int, name: str, out_slice: slice, linear: nn.Linear, args: tuple,
                    output: Tensor) -> None:
        """In place: a Linear does not keep its output for its backward pass."""
        output[..., out_slice].add_(self.layers[layer][name](args[0]).to(output.dtype))
        self._updated.add(layer)

    def forward(self, tokens: Tensor, layer: int, num_prefix_tokens: int = 0) -> Tensor:
        """After block `layer`: the tokens unchanged, once it is checked that the block's attention called
        the projections LoRA hooks into. One that reads their weights instead (timm's EVA with a fused qkv
        and separate q / v biases) would otherwise run without LoRA, silently."""
        if layer not in self._updated:
            raise ConfigError(f"LoRA: block {layer}'s attention did not call its projection modules "
                              "(it uses their weights directly, as timm's EVA with a fused qkv and separate biases "
                              "does), so LoRA cannot update them; build the model with separate q / k / v projections")
        self._updated.discard(layer)
        return tokens

    def queries(self) -> Tensor | None:
        """LoRA has no tokens for Mask2Former's queries."""
        return None
