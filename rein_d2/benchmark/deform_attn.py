"""Reference implementations of multi-scale deformable attention, to check and to time the fast one.

All restate the official CUDA op: a location l in [0, 1] reads pixel l * size - 0.5 of its
level, bilinearly, with zeros outside the map. Shapes as `ms_deform_attn`: value [N, S, M, D],
sampling_locations [N, Q, M, L, P, 2] (x, y), attention_weights [N, Q, M, L, P] -> [N, Q, M * D].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def _bilinear_zero_padded(level_value: Tensor, h: int, w: int, x: Tensor, y: Tensor) -> Tensor:
    """level_value [H*W, D]; (x, y) in pixel units of this level, pixel centres at integers."""
    x0, y0 = math.floor(x.item()), math.floor(y.item())
    acc = level_value.new_zeros(level_value.shape[-1])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                acc = acc + wy * wx * level_value[yy * w + xx]
    return acc


def per_point_ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                             attention_weights: Tensor) -> Tensor:
    """One sampling point at a time, in Python loops: the definition, not an implementation to run."""
    n, _, heads, _ = value.shape
    _, queries, _, _, points, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes:
        starts.append(starts[-1] + h * w)
    rows = []
    for b in range(n):
        for q in range(queries):
            per_head = []
            for m in range(heads):
                acc = 0
                for lvl, (h, w) in enumerate(spatial_shapes):
                    level_value = value[b, starts[lvl]:starts[lvl + 1], m]
                    for p in range(points):
                        x = sampling_locations[b, q, m, lvl, p, 0] * w - 0.5
                        y = sampling_locations[b, q, m, lvl, p, 1] * h - 0.5
                        acc = acc + attention_weights[b, q, m, lvl, p] * _bilinear_zero_padded(level_value, h, w, x, y)
                per_head.append(acc)
            rows.append(torch.cat(per_head))
    return torch.stack(rows).view(n, queries, -1)


def gather_ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                          attention_weights: Tensor) -> Tensor:
    """Every point's four neighbours gathered by index and weighted explicitly, vectorised over
    all points: the straightforward tensor implementation, without grid_sample."""
    n, _, heads, dim = value.shape
    _, queries, _, _, _, _ = sampling_locations.shape
    batch_index = torch.arange(n, device=value.device)[:, None, None, None]
    head_index = torch.arange(heads, device=value.device)[None, None, :, None]
    out = value.new_zeros(n, queries, heads, dim)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        x = sampling_locations[:, :, :, level, :, 0] * w - 0.5  # [N, Q, M, P]
        y = sampling_locations[:, :, :, level, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs()) * inside * attention_weights[:, :, :, level]
            index = start + (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            out = out + (weight[..., None] * value[batch_index, index, head_index]).sum(3)
        start += h * w
    return out.flatten(2)


def official_ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                            attention_weights: Tensor) -> Tensor:
    """What the official Mask2Former runs without its CUDA op (its PyTorch core): per level, the
    values copied into [N*M, D, H, W] and one grid_sample at 2 * location - 1; then the samples
    of all levels stacked, multiplied by the attention weights, summed, and transposed back."""
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    samples = []
    for level, ((h, w), level_value) in enumerate(zip(spatial_shapes, value.split([h * w for h, w in spatial_shapes],
                                                                                   dim=1))):
        level_value = level_value.flatten(2).transpose(1, 2).reshape(n * heads, dim, h, w)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(n, heads * dim, queries)
    return out.transpose(1, 2).contiguous()
