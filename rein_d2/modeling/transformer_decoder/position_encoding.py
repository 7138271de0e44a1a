"""Sine positional encoding of a feature map's grid (DETR), as Mask2Former uses it."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sin/cos encoding of (y, x); no parameters, so it never enters a checkpoint.

    Returns [B, 2 * num_pos_feats, H, W]: the y encoding, then the x encoding, each with
    sin on even and cos on odd frequencies, like the official module.
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

    def _encode_axis(self, length: int, device: torch.device) -> Tensor:
        """[length, num_pos_feats] encoding of positions 1..length (1-based, as a cumsum gives)."""
        pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        if self.normalize:
            pos = pos / (length + 1e-6) * self.scale
        freq = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        freq = self.temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / self.num_pos_feats)
        angles = pos[:, None] / freq
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        enc_y = self._encode_axis(h, x.device)[:, None, :].expand(h, w, -1)
        enc_x = self._encode_axis(w, x.device)[None, :, :].expand(h, w, -1)
        pos = torch.cat([enc_y, enc_x], dim=-1).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(b, -1, -1, -1)
