"""Sine positional encoding of a feature map's grid (DETR), as Mask2Former uses it."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...utils.tensor_cache import size_cache


def _encode_axis(length: int, num_pos_feats: int, temperature: float, normalize: bool, scale: float,
                 device: torch.device) -> Tensor:
    """[length, num_pos_feats] encoding of positions 1..length (1-based, as a cumsum gives)."""
    pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)
    if normalize:
        pos = pos / (length + 1e-6) * scale
    freq = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / num_pos_feats)
    angles = pos[:, None] / freq
    return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)


@size_cache()
def sine_position_code(height: int, width: int, num_pos_feats: int, temperature: float, normalize: bool, scale: float,
                       device: torch.device) -> Tensor:
    """[1, 2 * num_pos_feats, H, W], stored channels last: flattened and transposed to [1, H*W, C]
    as the decoders read it, it stays a view. Depends on the size only, so it is made once per size."""
    enc_y = _encode_axis(height, num_pos_feats, temperature, normalize, scale, device)
    enc_x = _encode_axis(width, num_pos_feats, temperature, normalize, scale, device)
    code = torch.cat([enc_y[:, None, :].expand(height, width, -1), enc_x[None, :, :].expand(height, width, -1)], dim=-1)
    return code.permute(2, 0, 1).unsqueeze(0)


class PositionEmbeddingSine(nn.Module):
    """Fixed sin/cos encoding of (y, x); no parameters, so it never enters a checkpoint.

    Returns [B, 2 * num_pos_feats, H, W]: the y encoding, then the x encoding, each with
    sin on even and cos on odd frequencies, like the official module. The result is a view of a
    cached tensor (one per size and device): read it, never modify it in place.
    """

    def __init__(self, num_pos_feats: int = 64, temperature: float = 10000.0, normalize: bool = False,
                 scale: float | None = None) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: a scale only applies with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        code = sine_position_code(int(h), int(w), self.num_pos_feats, self.temperature, self.normalize, self.scale,
                                  x.device)
        return code.expand(b, -1, -1, -1)
