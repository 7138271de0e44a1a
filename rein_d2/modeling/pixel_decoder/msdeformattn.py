"""Mask2Former's pixel decoder: a deformable-attention encoder over res3-res5, then an FPN step to res2.

Module and parameter names follow the official MSDeformAttnPixelDecoder (`input_proj`,
`transformer.level_embed`, `transformer.encoder.layers.N`, `adapter_1`, `layer_1`,
`mask_features`), so official checkpoints load with strict key matching.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ConfigError
from ...utils.tensor_cache import size_cache
from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from .ms_deform_attn import MSDeformAttn, SamplingReference

# The official encoder's feed-forward width, independent of MODEL.MASK_FORMER.DIM_FEEDFORWARD.
ENCODER_DIM_FEEDFORWARD = 1024
# The transformer decoder always reads three scales.
NUM_DECODER_SCALES = 3


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm deformable self-attention over all levels, then a ReLU feed-forward."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int,
                 n_points: int, compile_backend: str = "") -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, compile_backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor | SamplingReference,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        # In place: the product is not needed again (addmm saves its inputs), and a fresh 1024-wide
        # buffer per layer costs as much as the ReLU itself.
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))
        return self.norm2(src + self.dropout3(hidden))


class MSDeformAttnEncoder(nn.Module):
    """A stack of encoder layers; every position's reference point is its own pixel centre."""

    def __init__(self, layer_factory: Callable[[], MSDeformAttnEncoderLayer], num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layer_factory() for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """[1, S, 1, 2] normalised (x, y) pixel centres of all levels, flattened row-major."""
        centres = []
        for h, w in spatial_shapes:
            y = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            x = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
            centres.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
        return torch.cat(centres)[None, :, None, :]

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        attn = self.layers[0].self_attn
        refs = encoder_sampling_reference(tuple(spatial_shapes), attn.n_heads, attn.n_points, src.device, src.dtype)
        for layer in self.layers:
            src = layer(src, pos, refs, spatial_shapes)
        return src


@size_cache(maxsize=4)  # an entry of a 1024 x 1024 input (three levels) holds 16 MB
def encoder_sampling_reference(spatial_shapes: tuple[tuple[int, int], ...], heads: int, points: int,
                               device: torch.device, dtype: torch.dtype) -> SamplingReference:
    """Every level's pixel centres as the reference of every level, in sampling columns: depends on
    the sizes only, so it is made once per input size, not per layer and call."""
    refs = MSDeformAttnEncoder.reference_points(spatial_shapes, device).to(dtype)
    refs = refs.expand(-1, -1, len(spatial_shapes), -1)
    return SamplingReference.from_points(refs, heads, points)


class MSDeformAttnTransformer(nn.Module):
    """Flattens the levels, adds a learned per-level embedding to the position code, encodes."""

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, dim_feedforward: int, dropout: float,
                 num_feature_levels: int, enc_n_points: int, compile_backend: str = "") -> None:
        super().__init__()
        self.encoder = MSDeformAttnEncoder(
            lambda: MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                             enc_n_points, compile_backend),
            num_encoder_layers,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], pos_embeds: list[Tensor]) -> list[Tensor]:
        """srcs, pos_embeds: [N, C, H_l, W_l] per level. Returns the encoded maps, same shapes."""
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        flat_pos = torch.cat([pos.flatten(2).transpose(1, 2) + self.level_embed[lvl]
                              for lvl, pos in enumerate(pos_embeds)], dim=1)
        memory = self.encoder(flat_src, flat_pos, shapes)
        n, _, c = memory.shape
        return [m.transpose(1, 2).reshape(n, c, h, w)
                for m, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)]


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features -> (mask features at the common stride, coarsest map, three decoder scales)."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_enc_points: int = 4,
        conv_dim: int,
        mask_dim: int,
        norm: str | Callable | None = None,
        transformer_in_features: list[str],
        common_stride: int,
        deform_attn_compile: str = "",
    ) -> None:
        """deform_attn_compile: torch.compile backend of the deformable attention's sampling, "" eager."""
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise ConfigError(f"MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {missing} are not "
                             f"among the pixel decoder's inputs {sorted(input_shape)} "
                             "(MODEL.SEM_SEG_HEAD.IN_FEATURES and the backbone's outputs)")
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in by_stride]
        self.feature_channels = [shape.channels for _, shape in by_stride]
        enc_inputs = [(name, shape) for name, shape in by_stride if name in transformer_in_features]
        self.transformer_in_features = [name for name, _ in enc_inputs]
        self.transformer_feature_strides = [shape.stride for _, shape in enc_inputs]
        self.transformer_num_feature_levels = len(enc_inputs)

        # One 1x1 projection + GroupNorm per encoder level, coarsest first.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(shape.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, shape in reversed(enc_inputs)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        self.transformer = MSDeformAttnTransformer(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_enc_points,
            compile_backend=deform_attn_compile,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = NUM_DECODER_SCALES
        self.common_stride = common_stride
        # FPN levels finer than the encoder's finest input, down to the common stride.
        self.num_fpn_levels = int(math.log2(min(self.transformer_feature_strides)) - math.log2(common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Plain lists (already registered above under the official names), coarse to fine.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            # The official decoder uses the transformer decoder's head count here too.
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "transformer_dim_feedforward": ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_enc_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "deform_attn_compile": head.DEFORM_ATTN_COMPILE,
        }

    def feature(self, features: dict[str, Tensor], name: str) -> Tensor:
        """A backbone map in the decoder's own precision: float32 even under autocast, as the official
        decoder runs (float64 for a model converted to it)."""
        return features[name].to(self.mask_features.weight.dtype)

    def forward_features(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Runs without autocast, in the decoder's precision (`feature`)."""
        with torch.autocast(device_type=next(iter(features.values())).device.type, enabled=False):
            srcs, pos = [], []
            for proj, name in zip(self.input_proj, reversed(self.transformer_in_features)):
                x = self.feature(features, name)
                srcs.append(proj(x))
                pos.append(self.pe_layer(x))
            return self.decode(self.transformer(srcs, pos), features)

    def decode(self, encoded: list[Tensor], features: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """From the encoded maps (coarsest first): the FPN steps down to the common stride, then
        (mask features, coarsest map, the decoder's scales)."""
        out = list(encoded)
        for lateral, output, name in zip(self.lateral_convs, self.output_convs,
                                         reversed(self.in_features[: self.num_fpn_levels])):
            fine = lateral(self.feature(features, name))
            out.append(output(fine + F.interpolate(out[-1], size=fine.shape[-2:], mode="bilinear",
                                                   align_corners=False)))
        return self.mask_features(out[-1]), out[0], out[: self.maskformer_num_feature_levels]
