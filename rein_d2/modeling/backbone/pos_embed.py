"""Position embeddings at any patch grid, resampled as each VFM family's official code does.

timm (with `dynamic_img_size=True`) resamples every absolute position grid by an antialiased
bicubic resize to the target size. The official implementations differ, and a model only
reproduces its released features off its native grid (whole-image inference, the demo) with
its own formula. What each family's official code (the official Rein backbones,
github.com/w1oves/Rein rein/models/backbones/*.py, and the `dinov2` package) does when the
patch grid differs from the stored one:

- DINOv2 (`interpolate_pos_encoding`): bicubic by scale factor ((h + 0.1) / sqrt(N),
  (w + 0.1) / sqrt(N)) on (rows, columns), no antialiasing, in float32, cast to the tokens'
  dtype; class position kept; the stored embedding unchanged on the native grid.
  -> `resample_dinov2`.
- CLIP (`CLIPVisionTransformer.forward`): bilinear to the target size, align_corners=False,
  no antialiasing, in the tokens' dtype, class position kept, at every call. -> `resample_clip`.
- EVA02 (`EVA2.forward_features`): adds the stored absolute embedding and applies a rotary
  table fixed when the model is built (t = arange(n) / n * pt_seq_len), so another grid
  fails; timm's resampling and its rotary embedding (the same formula per axis) serve.
- SAM: the official Rein has no SAM backbone and SAM's own image encoder adds its NHWC grid
  as is; timm's `resample_abs_pos_embed_nhwc` (antialiased bicubic) serves.
- MAE: the official Rein has no MAE backbone and MAE resizes its grid only when loading a
  checkpoint; timm's resampling serves.

`use_official_pos_embed` gives a freshly created timm model its family's resampling (families
not in `OFFICIAL_POS_EMBED` keep timm's). On the native grid every path returns the stored
embedding untouched, so sliding-window crops are unaffected.
"""
from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

# (stored position embedding [1, P + h0*w0, C], target grid (h, w), stored grid (h0, w0),
#  P prefix positions kept as they are, dtype of the tokens) -> [1, P + h*w, C]
GridResampler = Callable[[Tensor, tuple[int, int], tuple[int, int], int, torch.dtype], Tensor]

# DINOv2's offset against floating-point error in the output size (facebookresearch/dino#8).
DINOV2_INTERPOLATE_OFFSET = 0.1


def _split_grid(pos_embed: Tensor, old_grid: tuple[int, int], num_prefix: int) -> tuple[Tensor, Tensor]:
    """Prefix positions [1, P, C] and the grid as an NCHW map [1, C, h0, w0]."""
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    return prefix, grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)


def _join_grid(prefix: Tensor, grid: Tensor) -> Tensor:
    return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)


def resample_dinov2(pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix: int,
                    dtype: torch.dtype) -> Tensor:
    """Official DINOv2 `interpolate_pos_encoding`.

    The official code names the input's height `w` (`B, nc, w, h = x.shape`) and scales the
    map's rows by it, so rows follow the image height and columns its width. Its early-out
    (`npatch == N and w == h`) is, for the square stored grid and inputs divisible by the
    patch, exactly "target grid == stored grid"; it returns the parameter itself.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = _split_grid(pos_embed.float(), old_grid, num_prefix)
    scale = tuple((new + DINOV2_INTERPOLATE_OFFSET) / old for new, old in zip(new_grid, old_grid))
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic")
    return _join_grid(prefix, grid).to(dtype)


def resample_clip(pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix: int,
                  dtype: torch.dtype) -> Tensor:
    """Official Rein `CLIPVisionTransformer.forward`: bilinear to the target size, in the tokens' dtype.

    The official code interpolates at every call; on the stored grid that bilinear resize is the
    identity, so the stored embedding is returned as is.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = _split_grid(pos_embed.to(dtype), old_grid, num_prefix)
    return _join_grid(prefix, F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False))


# (timm class, timm model-name pattern, resampler); first match wins, no match keeps timm's.
OFFICIAL_POS_EMBED: tuple[tuple[type[nn.Module], str, GridResampler], ...] = (
    (VisionTransformer, "vit_*_dinov2*", resample_dinov2),
    (VisionTransformer, "vit_*_clip_*", resample_clip),
)


def official_resampler(model: nn.Module, timm_name: str) -> GridResampler | None:
    """The family's official resampler for this timm model, None where timm's own serves."""
    for model_class, pattern, resample in OFFICIAL_POS_EMBED:
        if isinstance(model, model_class) and fnmatch.fnmatchcase(timm_name, pattern):
            return resample
    return None


def vit_pos_embed(model: VisionTransformer, resample: GridResampler, x: Tensor) -> Tensor:
    """timm `VisionTransformer._pos_embed` (dynamic size: NHWC patch tokens in) with `resample`.

    Prefix tokens are placed as timm places them: before adding the positions when the grid
    includes their positions, after when it does not (`no_embed_class`, e.g. DINOv2 reg4, whose
    class position is folded into the class token when loading).
    """
    b, h, w, c = x.shape
    num_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos_embed = resample(model.pos_embed, (h, w), tuple(model.patch_embed.grid_size), num_prefix, x.dtype)
    x = x.view(b, -1, c)
    prefix = [token.expand(b, -1, -1) for token in (model.cls_token, model.reg_token) if token is not None]
    if model.no_embed_class:
        x = torch.cat(prefix + [x + pos_embed], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos_embed
    return model.pos_drop(x)


def use_official_pos_embed(model: nn.Module, timm_name: str) -> nn.Module:
    """Give `model` (created by timm as `timm_name`) its family's official position resampling.

    Only models that resample at all (timm's `dynamic_img_size`) and have an absolute grid are
    changed; the others are returned as they are.
    """
    resample = official_resampler(model, timm_name)
    if resample is not None and getattr(model, "dynamic_img_size", False) and model.pos_embed is not None:
        model._pos_embed = functools.partial(vit_pos_embed, model, resample)
    return model
