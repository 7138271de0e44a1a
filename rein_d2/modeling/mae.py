"""Masked autoencoder (MAE, He et al., CVPR 2022) around a timm ViT: self-supervised pretraining.

The encoder is the timm ViT itself, unchanged, so its state dict is what ReinViT loads: it
sees a random quarter of the patch tokens (with their positions and the prefix tokens); a
light decoder (a few narrow transformer blocks over the encoded tokens and a learned mask
token at every hidden position, with fixed 2-D sine-cosine positions) predicts the pixels of
the hidden patches, each normalised by its own mean and variance (MAE's `norm_pix_loss`).
Plain PyTorch and timm, no Detectron2.
"""
from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn


def sincos_positions(grid: tuple[int, int], dim: int) -> Tensor:
    """[rows * cols, dim] fixed 2-D sine-cosine position embedding (half the channels per axis)."""
    if dim % 4:
        raise ValueError(f"the sine-cosine position embedding needs a width divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    angles = [axis.reshape(-1, 1) * frequencies for axis in (rows, cols)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1).float()


def patchify(images: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], patches in raster order as the ViT's tokens."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MaskedAutoencoder(nn.Module):
    """MAE pretraining of `encoder` on images of its native size (its patch grid)."""

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.patch = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.num_prefix = encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos", sincos_positions(self.grid, decoder_dim)[None], persistent=False)
        self.decoder = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                       for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.predict = nn.Linear(decoder_dim, self.patch * self.patch * encoder.patch_embed.proj.in_channels)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode_visible(self, images: Tensor, visible: Tensor) -> Tensor:
        """Encoder output [B, prefix + K, C] for the patches `visible` [B, K] (indices in raster order)."""
        tokens = self.encoder._pos_embed(self.encoder.patch_embed(images))
        prefix, patches = tokens[:, :self.num_prefix], tokens[:, self.num_prefix:]
        kept = torch.gather(patches, 1, visible[..., None].expand(-1, -1, patches.shape[-1]))
        x = self.encoder.norm_pre(torch.cat([prefix, kept], dim=1))
        return self.encoder.norm(self.encoder.blocks(x))

    def decode(self, encoded: Tensor, visible: Tensor) -> Tensor:
        """Predicted normalised pixels [B, N, p*p*C] of every patch from the visible patches' encoding."""
        x = self.decoder_embed(encoded)
        b, n = x.shape[0], self.grid[0] * self.grid[1]
        canvas = self.mask_token.expand(b, n, -1).scatter(1, visible[..., None].expand(-1, -1, x.shape[-1]),
                                                          x[:, self.num_prefix:])
        x = torch.cat([x[:, :self.num_prefix], canvas + self.decoder_pos], dim=1)
        return self.predict(self.decoder_norm(self.decoder(x)))[:, self.num_prefix:]

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The MAE loss: mean squared error on the hidden patches' normalised pixels."""
        b, n = images.shape[0], self.grid[0] * self.grid[1]
        keep = max(1, round(n * (1.0 - self.mask_ratio)))
        order = torch.rand(b, n, generator=generator, device=images.device).argsort(dim=1)
        visible = order[:, :keep]
        prediction = self.decode(self.encode_visible(images, visible), visible)
        target = patchify(images, self.patch)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        hidden = torch.ones(b, n, device=images.device).scatter(1, visible, 0.0)
        error = ((prediction - target) ** 2).mean(-1)
        return (error * hidden).sum() / hidden.sum()
