"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

No compiled op: `F.grid_sample` (bilinear, zero padding, align_corners=False) samples
exactly what the official CUDA kernel samples. A location l in [0, 1] reads pixel
l * size - 0.5 of its level, bilinearly, with zeros outside the map; autograd gives the
gradients with respect to values, locations and weights. Like the CUDA kernel, training
keeps only the inputs: the samples [N*M, D, Q, P], the pixel decoder's largest activations,
are recomputed in the backward pass (torch.utils.checkpoint), a small cost in time.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


def _weighted_samples(level_value: Tensor, grid: Tensor, weights: Tensor) -> Tensor:
    """One level: bilinear samples [N*M, D, Q, P] at `grid`, summed over points with `weights` -> [N*M, D, Q]."""
    sampled = F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.einsum("bdqp,bqp->bdq", sampled, weights)


def ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples over levels and points.

    value [N, S, M, D] (levels flattened row-major and concatenated, S = sum H*W),
    spatial_shapes [(H, W)] per level, sampling_locations [N, Q, M, L, P, 2] as (x, y)
    in [0, 1], attention_weights [N, Q, M, L, P]. Returns [N, Q, M * D].
    """
    n, total, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    if len(sizes) != levels or sum(sizes) != total:
        raise ValueError(f"ms_deform_attn: spatial_shapes {list(spatial_shapes)} give {len(sizes)} levels and "
                         f"{sum(sizes)} positions, but sampling_locations have {levels} levels and value has "
                         f"{total} positions")
    # Heads join the batch; grid_sample wants coordinates in [-1, 1].
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # [N*M, Q, L, P, 2]
    weights = attention_weights.transpose(1, 2).flatten(0, 1)  # [N*M, Q, L, P]
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (value, sampling_locations,
                                                                          attention_weights))
    out = value.new_zeros(n * heads, dim, queries)
    for level, ((h, w), level_value) in enumerate(zip(spatial_shapes, value.split(sizes, dim=1))):
        level_value = level_value.permute(0, 2, 3, 1).reshape(n * heads, dim, h, w)
        inputs = (level_value, grids[:, :, level], weights[:, :, level])
        if recompute:
            out = out + checkpoint(_weighted_samples, *inputs, use_reentrant=False)
        else:
            out = out + _weighted_samples(*inputs)
    return out.view(n, heads * dim, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Each query attends to n_points learned offsets around its reference point, per head and level.

    Parameter names and initialisation are those of the official module, so its weights load.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start on n_heads rays at distances 1..n_points pixels; attention starts uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        rays = torch.stack([angles.cos(), angles.sin()], dim=-1)
        rays = rays / rays.abs().amax(dim=-1, keepdim=True)
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        bias = rays[:, None, None, :] * distances[None, None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """query [N, Q, C], reference_points [N, Q, L, 2] (x, y in [0, 1]), input_flatten [N, S, C]."""
        n, num_queries, _ = query.shape
        if reference_points.shape[-1] != 2:
            raise ValueError("MSDeformAttn: reference_points must be (x, y) points, last dim 2; "
                             f"got shape {tuple(reference_points.shape)}")
        value = self.value_proj(input_flatten).view(n, input_flatten.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).view(n, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, num_queries, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of their level: normalise by (W, H).
        level_sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / level_sizes[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
