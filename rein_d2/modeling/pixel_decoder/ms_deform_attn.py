"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

No compiled op. A location l in [0, 1] reads pixel l * size - 0.5 of its level, bilinearly,
with zeros outside the map, as the official CUDA kernel (and `grid_sample` with
align_corners=False and zero padding) does. Every sampling point becomes its four
neighbouring rows of the value table [N*S*M, D] (value_proj's output as it is: image,
position, head) with their weights (bilinear x attention, zero outside the map), and one
`embedding_bag` sums, for every query and head, the weighted rows of all its levels and
points: no layout copy of the values, one call for all heads, levels and points. Autograd
gives the gradients with respect to values, locations and weights. Like the CUDA kernel,
training keeps only the inputs: rows and weights are recomputed in the backward pass
(torch.utils.checkpoint).
"""
from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ...utils.tensor_cache import size_cache

# Input signatures whose compiled-versus-eager verdict `CompiledTaps` remembers.
VERDICTS_KEPT = 16

logger = logging.getLogger(__name__)


class LevelColumns(NamedTuple):
    """Constants of each sampling column (head m, level l, point p), flattened in that order; [2, C]
    tensors hold the x row, then the y row."""

    size: Tensor  # (W_l, H_l): the normaliser of locations and offsets
    last: Tensor  # (W_l - 1, H_l - 1): the last pixel column and row of the level
    steps: Tensor  # int32 (M, W_l * M): rows of the value table between two pixel columns, two pixel rows
    row_base: Tensor  # int32 [C]: the level's first row for head m in one image's value table, start_l * M + m


@size_cache()
def level_columns(spatial_shapes: tuple[tuple[int, int], ...], heads: int, points: int, device: torch.device,
                  dtype: torch.dtype) -> LevelColumns:
    """The sampling columns' constants for these level sizes, made once per size."""
    starts = [0]
    for h, w in spatial_shapes[:-1]:
        starts.append(starts[-1] + h * w)

    def per_column(values: list[int]) -> Tensor:
        grid = torch.tensor(values, dtype=torch.int64, device=device)[None, :, None]
        return grid.expand(heads, len(spatial_shapes), points).reshape(-1)

    size = torch.stack([per_column([w for _, w in spatial_shapes]), per_column([h for h, _ in spatial_shapes])])
    steps = torch.stack([torch.full_like(size[0], heads), size[0] * heads])
    heads_first = torch.arange(heads, device=device).repeat_interleave(len(spatial_shapes) * points)
    row_base = per_column([s * heads for s in starts]) + heads_first
    return LevelColumns(size.to(dtype), (size - 1).to(dtype), steps.to(torch.int32), row_base.to(torch.int32))


def bilinear_taps(xy: Tensor, weights: Tensor, columns: LevelColumns, heads: int,
                  positions: int) -> tuple[Tensor, Tensor]:
    """Rows of the value table [N*S*M, D] and their weights, 4 per sampling point: [N, Q, C, 4] each.

    xy [N, Q, 2, C]: pixel coordinates x, then y (centres at integers) of the C = M*L*P sampling
    columns; weights [N, Q, C]. x and y go through each step together (half the calls). A
    neighbour outside its level gets weight 0 and some valid row.
    """
    low = xy.floor()
    frac = xy - low
    # Weights of the neighbours at low and at low + 1, zero where that pixel is outside the level.
    at_low = torch.where((low >= 0) & (low <= columns.last), 1 - frac, 0.0)
    at_high = torch.where((low >= -1) & (low < columns.last), frac, 0.0)
    (x0, y0), (x1, y1) = at_low.unbind(-2), at_high.unbind(-2)
    y0, y1 = y0 * weights, y1 * weights
    taps = torch.stack([y0 * x0, y0 * x1, y1 * x0, y1 * x1], dim=-1)
    n = xy.shape[0]
    image_base = torch.arange(n, dtype=torch.int32, device=xy.device)[:, None, None] * (positions * heads)
    cells = low.to(torch.int32) * columns.steps
    first = cells[:, :, 0] + cells[:, :, 1] + (columns.row_base + image_base)
    below = first + columns.steps[1]
    rows = torch.stack([first, first + heads, below, below + heads], dim=-1).clamp_(0, n * positions * heads - 1)
    return rows, taps


def pixel_taps(locations: Tensor, weights: Tensor, columns: LevelColumns, heads: int,
               positions: int) -> tuple[Tensor, Tensor]:
    """`bilinear_taps` of normalised locations [N, Q, 2, C], in pixels as the official kernel computes
    them (location * size - 0.5), so that a point on a pixel centre rounds alike."""
    return bilinear_taps(locations * columns.size - 0.5, weights, columns, heads, positions)


Taps = Callable[[Tensor, Tensor, LevelColumns, int, int], tuple[Tensor, Tensor]]


class CompiledTaps:
    """`pixel_taps` through torch.compile, chosen for an input signature only once the compiled
    function gave the eager result on it (rows equal, weights within 1e-6 relative); a signature
    that differs, or fails to compile, stays eager, with a warning. Eager while tracing (ONNX)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.compiled = torch.compile(pixel_taps, backend=backend)
        self.verdicts: OrderedDict[tuple, bool] = OrderedDict()

    def select(self, locations: Tensor, weights: Tensor, columns: LevelColumns, heads: int, positions: int) -> Taps:
        """The function for these inputs, chosen before the forward pass so that a recomputation in the
        backward pass (checkpoint) runs the same one."""
        if torch.jit.is_tracing():
            return pixel_taps
        key = (tuple(locations.shape), tuple(columns.size.shape), locations.dtype, locations.device, heads, positions)
        if key not in self.verdicts:
            args = (locations.detach(), weights.detach(), columns, heads, positions)
            with torch.no_grad():
                self.verdicts[key] = self._matches(pixel_taps(*args), args)
            while len(self.verdicts) > VERDICTS_KEPT:
                self.verdicts.popitem(last=False)
        self.verdicts.move_to_end(key)
        return self.compiled if self.verdicts[key] else pixel_taps

    def _matches(self, eager: tuple[Tensor, Tensor], args: tuple) -> bool:
        try:
            rows, taps = self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure means: stay eager
            logger.warning("MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE=%r failed (%s: %s); the deformable attention "
                           "runs eagerly", self.backend, type(err).__name__, err)
            return False
        same = torch.equal(rows, eager[0]) and torch.allclose(taps, eager[1], rtol=1e-6, atol=1e-7)
        if not same:
            logger.warning("MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE=%r gives other sampling weights than the eager "
                           "code for inputs of shape %s; they run eagerly", self.backend, tuple(args[0].shape))
        return same


@functools.lru_cache(maxsize=None)
def compiled_taps(backend: str) -> CompiledTaps:
    """One compiled function per backend, shared by every layer (and recompiled only per shape)."""
    return CompiledTaps(backend)


def weighted_rows(table: Tensor, rows: Tensor, taps: Tensor) -> Tensor:
    """sum_k taps[b, k] * table[rows[b, k]] -> [B, D]: one embedding_bag; traced for ONNX (which has
    no such operator) a gather and a batched product."""
    if torch.jit.is_tracing():
        return torch.matmul(taps.unsqueeze(-2), F.embedding(rows, table)).squeeze(-2)
    return F.embedding_bag(rows, table, mode="sum", per_sample_weights=taps)


def _sample_levels(value: Tensor, locations: Tensor, weights: Tensor, columns: LevelColumns, taps_fn: Taps) -> Tensor:
    n, positions, heads, dim = value.shape
    queries = locations.shape[1]
    rows, taps = taps_fn(locations, weights, columns, heads, positions)
    bags = n * queries * heads
    out = weighted_rows(value.reshape(n * positions * heads, dim), rows.view(bags, -1), taps.view(bags, -1))
    return out.view(n, queries, heads * dim)


def sample_levels(value: Tensor, locations: Tensor, weights: Tensor, spatial_shapes: Sequence[tuple[int, int]],
                  points: int, fused: CompiledTaps | None = None) -> Tensor:
    """Weighted sum of bilinear samples over levels and points, per query and head.

    value [N, S, M, D] (levels flattened row-major and concatenated, S = sum H*W);
    locations [N, Q, 2, C]: x, then y, in [0, 1] of every sampling column (head, level, point;
    C = M*L*P); weights [N, Q, C]. Returns [N, Q, M * D]. fused: the compiled `pixel_taps`, or None.
    """
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    n, positions, heads, _ = value.shape
    if sum(h * w for h, w in shapes) != positions or locations.shape[-1] != heads * len(shapes) * points:
        raise ValueError(f"ms_deform_attn: spatial_shapes {list(shapes)} give {len(shapes)} levels and "
                         f"{sum(h * w for h, w in shapes)} positions, but value has {positions} positions and "
                         f"the sampling columns are {locations.shape[-1]}, not {heads} heads x {len(shapes)} levels x "
                         f"{points} points")
    columns = level_columns(shapes, heads, points, locations.device, locations.dtype)
    taps_fn = fused.select(locations, weights, columns, heads, positions) if fused else pixel_taps
    if torch.is_grad_enabled() and any(t.requires_grad for t in (value, locations, weights)):
        return checkpoint(_sample_levels, value, locations, weights, columns, taps_fn, use_reentrant=False)
    return _sample_levels(value, locations, weights, columns, taps_fn)


def ms_deform_attn(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], sampling_locations: Tensor,
                   attention_weights: Tensor) -> Tensor:
    """The official op's interface: value [N, S, M, D], spatial_shapes [(H, W)] per level,
    sampling_locations [N, Q, M, L, P, 2] as (x, y) in [0, 1], attention_weights [N, Q, M, L, P].
    Returns [N, Q, M * D].
    """
    n, queries, _, levels, points, _ = sampling_locations.shape
    if len(spatial_shapes) != levels:
        raise ValueError(f"ms_deform_attn: spatial_shapes {list(spatial_shapes)} give {len(spatial_shapes)} levels, "
                         f"but sampling_locations have {levels} levels")
    locations = sampling_locations.permute(0, 1, 5, 2, 3, 4).reshape(n, queries, 2, -1)
    return sample_levels(value, locations, attention_weights.reshape(n, queries, -1), spatial_shapes, points)


class SamplingReference(NamedTuple):
    """Normalised reference points laid out as the sampling columns: xy [N or 1, Q, 2, M*L*P] (x,
    then y; columns head, level, point), so that offsets add to them without broadcasting."""

    xy: Tensor

    @classmethod
    def from_points(cls, reference_points: Tensor, heads: int, points: int) -> SamplingReference:
        """From (x, y) reference points [N, Q, L, 2]."""
        n, queries, levels, _ = reference_points.shape
        columns = reference_points.transpose(2, 3)[:, :, :, None, :, None].expand(n, queries, 2, heads, levels, points)
        return cls(columns.reshape(n, queries, 2, -1))


class MSDeformAttn(nn.Module):
    """Each query attends to n_points learned offsets around its reference point, per head and level.

    Parameter names and initialisation are those of the official module, so its weights load.
    compile_backend: torch.compile backend of the sampling's elementwise work (`CompiledTaps`), "" eager.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 compile_backend: str = "") -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.compile_backend = compile_backend
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

    @property
    def columns(self) -> int:
        """Sampling columns per query: heads x levels x points."""
        return self.n_heads * self.n_levels * self.n_points

    def query_projection(self) -> tuple[Tensor, Tensor]:
        """sampling_offsets and attention_weights as one Linear's weight and bias, built from the
        parameters at every call (a copy of a few thousand numbers): x offsets, y offsets, then
        attention logits, so one matrix product serves both and x and y come out unstrided."""
        c = self.columns
        offsets_weight = self.sampling_offsets.weight.view(c, 2, -1).transpose(0, 1).reshape(2 * c, -1)
        offsets_bias = self.sampling_offsets.bias.view(c, 2).t().reshape(-1)
        return (torch.cat([offsets_weight, self.attention_weights.weight]),
                torch.cat([offsets_bias, self.attention_weights.bias]))

    def forward(self, query: Tensor, reference_points: Tensor | SamplingReference, input_flatten: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """query [N, Q, C], input_flatten [N, S, C]; reference_points [N, Q, L, 2] (x, y in [0, 1]), or
        already a `SamplingReference` (the encoder's, computed once per input size)."""
        n, num_queries, _ = query.shape
        if not isinstance(reference_points, SamplingReference):
            if reference_points.shape[-1] != 2:
                raise ValueError("MSDeformAttn: reference_points must be (x, y) points, last dim 2; "
                                 f"got shape {tuple(reference_points.shape)}")
            reference_points = SamplingReference.from_points(reference_points, self.n_heads, self.n_points)
        value = self.value_proj(input_flatten).view(n, input_flatten.shape[1], self.n_heads, -1)
        offsets, logits = F.linear(query, *self.query_projection()).split([2 * self.columns, self.columns], dim=-1)
        weights = logits.reshape(n, num_queries, self.n_heads, -1).softmax(-1).view(n, num_queries, -1)
        # Offsets are in pixels of their level: normalised by (W, H) as the official module does.
        size = level_columns(tuple((int(h), int(w)) for h, w in spatial_shapes), self.n_heads, self.n_points,
                             query.device, query.dtype).size
        locations = offsets.view(n, num_queries, 2, -1) / size + reference_points.xy
        fused = compiled_taps(self.compile_backend) if self.compile_backend else None
        return self.output_proj(sample_levels(value, locations, weights, spatial_shapes, self.n_points, fused))
