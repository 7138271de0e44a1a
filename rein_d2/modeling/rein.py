"""Rein: learnable tokens that refine a frozen foundation model's features between its layers.

Plain PyTorch (no Detectron2), state-dict compatible with the official implementation
(`learnable_tokens` or `learnable_tokens_a`/`learnable_tokens_b`, `scale`,
`mlp_token2feat`, `mlp_delta_f`, `transform`, `merge`). Where the official code differs
from the paper's equations, this follows the code, because released checkpoints do:
the first token of every layer gets attention but never contributes a feature, the
update is `f + scale * mlp_delta_f(attn @ mlp_token2feat(T) + f)`, and the queries are
`merge([max, mean, last] over layers of transform(T))` interleaved per channel.

`share_layers=False` gives every layer its own `mlp_token2feat`, `mlp_delta_f` and
`transform` (keys `mlp_token2feat.<layer>.weight`, ...): the "Rein-core" rows of the paper's
Table 6, before the MLPs are shared; `merge` is one module in every variant.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

# Key under which a backbone hands Rein's queries to the Mask2Former decoder.
REIN_QUERIES_KEY = "rein_queries"


class Reins(nn.Module):
    """Full-rank Rein: one [token_length, embed_dims] token matrix per layer."""

    def __init__(
        self,
        num_layers: int,
        embed_dims: int,
        patch_size: int,
        query_dims: int = 256,
        token_length: int = 100,
        use_softmax: bool = True,
        link_token_to_query: bool = True,
        scale_init: float = 1e-3,
        zero_mlp_delta_f: bool = False,
        share_layers: bool = True,
    ) -> None:
        super().__init__()
        if token_length < 2:
            raise ConfigError(f"Rein needs token_length >= 2 (the first token only attends), got {token_length}")
        self.num_layers = num_layers
        self.embed_dims = embed_dims
        self.patch_size = patch_size
        self.query_dims = query_dims
        self.token_length = token_length
        self.use_softmax = use_softmax
        self.link_token_to_query = link_token_to_query
        self.share_layers = share_layers
        self._create_tokens()
        self.mlp_token2feat = self._layer_linear(embed_dims, embed_dims)
        self.mlp_delta_f = self._layer_linear(embed_dims, embed_dims)
        for linear in self._linears(self.mlp_token2feat) + self._linears(self.mlp_delta_f):
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
        if zero_mlp_delta_f:
            # The official variant drops the learnable scale and starts from a zero update.
            self.scale: Tensor | float = 1.0
            for linear in self._linears(self.mlp_delta_f):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
        else:
            self.scale = nn.Parameter(torch.tensor(scale_init))
        if link_token_to_query:
            self.transform = self._layer_linear(embed_dims, query_dims)
            self.merge = nn.Linear(query_dims * 3, query_dims)
        self._cache: tuple[tuple, dict[str, Tensor]] | None = None

    def _layer_linear(self, in_dims: int, out_dims: int) -> nn.Linear | nn.ModuleList:
        """One linear map for all layers, or one per layer."""
        if self.share_layers:
            return nn.Linear(in_dims, out_dims)
        return nn.ModuleList(nn.Linear(in_dims, out_dims) for _ in range(self.num_layers))

    @staticmethod
    def _linears(module: nn.Linear | nn.ModuleList) -> list[nn.Linear]:
        return list(module) if isinstance(module, nn.ModuleList) else [module]

    @staticmethod
    def _weight_bias(module: nn.Linear | nn.ModuleList, layer: int | None = None) -> tuple[Tensor, Tensor]:
        """(weight [out, in], bias [out]) of one layer, or of all layers: shared as they are,
        per layer stacked to [layers, out, in] and [layers, 1, out], so that `x @ W.mT + b`
        serves tokens of one layer [m, in] and of all layers [layers, m, in] alike."""
        if isinstance(module, nn.ModuleList):
            if layer is None:
                return (torch.stack([m.weight for m in module]), torch.stack([m.bias for m in module]).unsqueeze(1))
            module = module[layer]
        return module.weight, module.bias

    def _init_bound(self, token_dims: float) -> float:
        """Uniform bound of the official token initialisation (patch area enters it)."""
        return math.sqrt(6.0 / float(3 * self.patch_size * self.patch_size + token_dims))

    def _create_tokens(self) -> None:
        self.learnable_tokens = nn.Parameter(torch.empty(self.num_layers, self.token_length, self.embed_dims))
        bound = self._init_bound(self.embed_dims)
        nn.init.uniform_(self.learnable_tokens, -bound, bound)

    def all_tokens(self) -> Tensor:
        """Tokens of every layer, [num_layers, token_length, embed_dims]."""
        return self.learnable_tokens

    def layer_tokens(self, layer: int) -> Tensor:
        return self.learnable_tokens[layer]

    # ------------------------------------------------------------------ cache
    def _cache_key(self) -> tuple:
        """Changes whenever a parameter is replaced or modified in place (optimizer step,
        load_state_dict, .to()), or the autocast state changes: the cache can never be stale."""
        device_type = self._device().type
        autocast = torch.is_autocast_enabled(device_type)
        return (
            autocast,
            torch.get_autocast_dtype(device_type) if autocast else None,
            tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters()),
        )

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _weights_only_tensors(self) -> dict[str, Tensor]:
        """Everything that depends on weights only, for all layers at once, folded for the fast path.

        The update is linear in its two inputs, so with s = scale, (W, b) = mlp_delta_f and V the values:
            f + s * mlp_delta_f(attn @ V + f) = f + attn @ (s V W^T) + f @ (s W)^T + s b
        and since softmax rows sum to 1, s b joins every row of the folded values. Per token
        this leaves f @ keys (m x c), attn @ values (m x c) and f @ weight (c x c): the matrix
        products of the plain path, minus its element-wise passes. Folded with autocast off, in
        the parameters' dtype, then stored in the dtype the products run in (autocast's, if on).
        """
        weight, bias = self._weight_bias(self.mlp_delta_f)
        device_type = weight.device.type
        with torch.autocast(device_type, enabled=False):
            tokens = self.all_tokens()
            keys = tokens * self.embed_dims**-0.5 if self.use_softmax else tokens
            update_weight = weight * self.scale
            update_bias = bias * self.scale
            values = self._token_values(tokens) @ update_weight.mT
            if self.use_softmax:
                values = values + update_bias
            folded = {"keys": keys.transpose(1, 2), "values": values, "weight": update_weight.mT,
                      "bias": None if self.use_softmax else update_bias}
            queries = self._queries_from(tokens) if self.link_token_to_query else None
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        out = {name: t.to(dtype).contiguous() for name, t in folded.items() if t is not None}
        if queries is not None:
            out["queries"] = queries
        return out

    def _cached(self) -> dict[str, Tensor]:
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._weights_only_tensors())
        return self._cache[1]

    # ---------------------------------------------------------------- compute
    def _token_values(self, tokens: Tensor, layer: int | None = None) -> Tensor:
        """mlp_token2feat of every token but the first, whose value is zero: the first
        token takes part in the softmax but contributes nothing (official behaviour).
        tokens: one layer's [m, c] (give `layer`) or all layers' [layers, m, c]."""
        weight, bias = self._weight_bias(self.mlp_token2feat, layer)
        values = tokens[..., 1:, :] @ weight.mT + bias
        return F.pad(values, (0, 0, 1, 0))

    def _queries_from(self, tokens: Tensor) -> Tensor:
        weight, bias = self._weight_bias(self.transform)
        projected = tokens @ weight.mT + bias  # [layers, m, q]
        pooled = torch.stack([projected.amax(0), projected.mean(0), projected[-1]], dim=-1)
        return self.merge(pooled.flatten(-2))  # [m, q], features interleaved per channel

    def _refine(self, feats: Tensor, layer: int) -> Tensor:
        """The official equations, step by step: the path autograd trains through.

        The scale multiplies mlp_delta_f's weights, s (W h + b) = (s W) h + s b, not its
        [B, N, C] output: autograd then keeps no extra activation for the scale's gradient.
        """
        tokens = self.layer_tokens(layer)
        values = self._token_values(tokens, layer)
        attn = feats @ tokens.to(feats.dtype).transpose(0, 1)
        if self.use_softmax:
            attn = torch.softmax(attn * self.embed_dims**-0.5, dim=-1)
        hidden = attn @ values.to(feats.dtype) + feats
        weight, bias = self._weight_bias(self.mlp_delta_f, layer)
        return feats + F.linear(hidden, weight * self.scale, bias * self.scale)

    def _refine_folded(self, feats: Tensor, layer: int) -> Tensor:
        """Inference: the same update from the folded weights-only tensors (see `_weights_only_tensors`)."""
        folded = self._cached()
        weight = folded["weight"] if self.share_layers else folded["weight"][layer]
        x = feats.reshape(-1, self.embed_dims)
        attn = x @ folded["keys"][layer]
        if self.use_softmax:
            attn = attn.softmax(-1)
        if torch.is_autocast_enabled(x.device.type):
            # Products in autocast's dtype; the residual sum stays in the features' own dtype.
            out = x + (attn @ folded["values"][layer] + x @ weight)
        else:
            # One new tensor: f + attn @ values, then += f @ weight in place (BLAS accumulates).
            out = torch.addmm(x, attn, folded["values"][layer])
            out.addmm_(x, weight)
        if "bias" in folded:
            out += folded["bias"] if self.share_layers else folded["bias"][layer]
        return out.view(feats.shape)

    def forward(self, feats: Tensor, layer: int, num_prefix_tokens: int = 0) -> Tensor:
        """Refine tokens `feats` [B, N, C] after block `layer`.

        The first `num_prefix_tokens` (class, register) pass through unchanged. Every token is
        refined on its own, so they are computed along and then put back: cheaper than
        splitting the patch tokens off and concatenating the result.
        """
        refined = self._refine(feats, layer) if self._needs_grad() else self._refine_folded(feats, layer)
        if num_prefix_tokens:
            refined[:, :num_prefix_tokens] = feats[:, :num_prefix_tokens]
        return refined

    def queries(self) -> Tensor | None:
        """Queries [token_length, query_dims] for the Mask2Former decoder, or None."""
        if not self.link_token_to_query:
            return None
        if self._needs_grad():
            return self._queries_from(self.all_tokens())
        return self._cached()["queries"]


class LoRAReins(Reins):
    """Rein with each layer's tokens factorised as A [m, r] @ B [r, c]."""

    def __init__(self, *args, lora_dim: int = 16, **kwargs) -> None:
        self.lora_dim = lora_dim
        super().__init__(*args, **kwargs)

    def _create_tokens(self) -> None:
        self.learnable_tokens_a = nn.Parameter(torch.empty(self.num_layers, self.token_length, self.lora_dim))
        self.learnable_tokens_b = nn.Parameter(torch.empty(self.num_layers, self.lora_dim, self.embed_dims))
        bound = self._init_bound(math.sqrt(self.embed_dims * self.lora_dim))
        nn.init.uniform_(self.learnable_tokens_a, -bound, bound)
        nn.init.uniform_(self.learnable_tokens_b, -bound, bound)

    def all_tokens(self) -> Tensor:
        return self.learnable_tokens_a @ self.learnable_tokens_b

    def layer_tokens(self, layer: int) -> Tensor:
        return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]
