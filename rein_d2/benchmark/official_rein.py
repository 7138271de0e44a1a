"""The official Rein forward, step by step, on the weights of a rein-d2 `Reins`.

The baseline that shows what rein-d2's inference path saves, on the same weights: per call
and layer, the official code permutes to (tokens, batch, channels), splits the class token
off, recomputes mlp_token2feat of the tokens, takes two einsums, applies mlp_delta_f and the
scale in separate passes, and concatenates and permutes back; its queries are recomputed
on every forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.rein import Reins


class OfficialStyleRein(nn.Module):
    """Same interface as `Reins` (forward with num_prefix_tokens, queries), official computation."""

    def __init__(self, reins: Reins) -> None:
        super().__init__()
        self.reins = reins

    def forward(self, feats: Tensor, layer: int, num_prefix_tokens: int = 0) -> Tensor:
        r = self.reins
        x = feats.permute(1, 0, 2)
        prefix, x = torch.tensor_split(x, [num_prefix_tokens], dim=0)
        tokens = r.layer_tokens(layer)
        attn = torch.einsum("nbc,mc->nbm", x, tokens)
        if r.use_softmax:
            attn = F.softmax(attn * r.embed_dims**-0.5, dim=-1)
        delta = torch.einsum("nbm,mc->nbc", attn[:, :, 1:], r.mlp_token2feat(tokens[1:, :]))
        delta = r.mlp_delta_f(delta + x) * r.scale
        return torch.cat([prefix, x + delta], dim=0).permute(1, 0, 2)

    def queries(self) -> Tensor | None:
        r = self.reins
        if not r.link_token_to_query:
            return None
        tokens = r.transform(r.all_tokens()).permute(1, 2, 0)
        pooled = torch.cat([F.max_pool1d(tokens, kernel_size=r.num_layers),
                            F.avg_pool1d(tokens, kernel_size=r.num_layers), tokens[:, :, -1:]], dim=-1)
        return r.merge(pooled.flatten(-2, -1))
