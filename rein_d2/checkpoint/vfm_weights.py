"""Load a vision foundation model's weights from a local file into a timm model.

Accepts timm checkpoints and the official DINOv2 and DINOv3 release formats. A patch-embedding
kernel or position grid of another size is resized the way the official Rein converter
does (bicubic, align_corners=False, no antialiasing), so that patch-14 weights serve a
patch-16 model. Files are read with safetensors or the restricted reader
(restricted_pickle.py), which never runs code from a file.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models import eva
from torch import Tensor, nn

from ..errors import ReinD2Error
from .remote import local_weights_path
from .restricted_pickle import read_checkpoint

logger = logging.getLogger(__name__)

# Nesting used by training frameworks around the actual state dict.
WRAPPER_KEYS = ("model", "state_dict", "module")
DINOV2_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp\.)(w12|w3)(\.(?:weight|bias))$")


class IncompatibleWeightsError(ReinD2Error, ValueError):
    """The file's tensors do not fit the model's architecture."""


class WeightsFileNotFoundError(ReinD2Error, FileNotFoundError):
    """A configured weights file is not there."""


def read_state_dict(path: str | Path, config_key: str = "weights") -> dict[str, Tensor]:
    """Tensors of a .safetensors file or of any checkpoint the restricted reader reads, unwrapped.

    numpy arrays (Detectron2 .pkl files) become tensors. A URL is downloaded first (remote.py).
    """
    path = Path(local_weights_path(path, config_key))
    if not path.is_file():
        raise WeightsFileNotFoundError(f"{config_key}: weights file {str(path)!r} does not exist "
                                       f"(absolute: {path.resolve()}); set {config_key} to a local file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = read_checkpoint(path)
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, dict):
        state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise IncompatibleWeightsError(f"{config_key}: {path} holds no flat mapping of names to tensors "
                                       f"(under one of the keys {', '.join(WRAPPER_KEYS)} or at the top); "
                                       "save the weights as torch.save(model.state_dict(), path)")
    return state


def is_official_dinov3(state: dict[str, Tensor]) -> bool:
    """Meta's DINOv3 layout (storage tokens, LayerScale `ls1.gamma`, masked key bias)."""
    return "storage_tokens" in state


def is_official_dinov2(state: dict[str, Tensor]) -> bool:
    return "mask_token" in state and not is_official_dinov3(state)


def _query_or_value_bias(qkv_bias: Tensor) -> bool:
    query, _, value = qkv_bias.chunk(3, dim=-1)
    return bool(query.any() or value.any())


def dinov3_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Meta's DINOv3 names -> timm's, by timm's own converter (`timm.models.eva`).

    The official blocks carry a qkv bias whose key part is masked to zero. timm has two
    variants: with query/value biases (`*_dinov3_qkvb`) and without, for the releases whose
    biases are all zero (the distilled ViT-B/L). A file with non-zero biases and a model
    without them is refused rather than loaded without its biases.
    """
    if not any(name.endswith("q_bias") for name, _ in model.named_parameters()):
        biased = [k for k, v in state.items() if k.endswith("attn.qkv.bias") and _query_or_value_bias(v)]
        if biased:
            raise IncompatibleWeightsError(
                f"the DINOv3 file has non-zero query/value biases ({biased[0]} and {len(biased) - 1} more) but "
                f"this timm model has none: use its '_qkvb' variant (MODEL.VIT.TIMM_NAME ..._dinov3_qkvb)")
        state = {k: v for k, v in state.items() if not k.endswith("attn.qkv.bias")}
    return eva.checkpoint_filter_fn(state, model)


def dinov2_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official DINOv2 key names -> timm's (registers and SwiGLU naming; mask token dropped)."""
    state = {DINOV2_SWIGLU.sub(lambda m: m[1] + {"w12": "fc1", "w3": "fc2"}[m[2]] + m[3], k): v
             for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        # timm's register models keep prefix tokens outside the position grid, so the class
        # token's position embedding is folded into the token itself, as DINOv2 adds it.
        pos = state.pop("pos_embed")
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def resize_grid(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of the last two dims, as the official patch-14 -> 16 converter."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t.float(), size=size, mode="bicubic", align_corners=False).to(t.dtype)


def _pos_prefix_tokens(model: nn.Module) -> int:
    if getattr(model, "no_embed_class", False):
        return 0
    return getattr(model, "num_prefix_tokens", 0)


def resize_pos_embed(pos: Tensor, target: Tensor, num_prefix: int) -> Tensor:
    """Resize a position grid to the model's: [1, P + H*W, C] token layout or [1, H, W, C] (SAM)."""
    if pos.shape == target.shape:
        return pos
    if pos.ndim == 4:
        return resize_grid(pos.permute(0, 3, 1, 2), target.shape[1:3]).permute(0, 2, 3, 1)
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    side, target_side = int(grid.shape[1] ** 0.5), int((target.shape[1] - num_prefix) ** 0.5)
    if side * side != grid.shape[1] or target_side**2 != target.shape[1] - num_prefix:
        return pos  # not a square grid: reported as a shape mismatch
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = resize_grid(grid, (target_side, target_side)).permute(0, 2, 3, 1).reshape(1, target_side**2, -1)
    return torch.cat([prefix, grid], dim=1)


def fit_to_model(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Timm-keyed tensors with the patch kernel and position grid resized to `model`'s."""
    if is_official_dinov2(state):
        state = dinov2_to_timm(state)
    elif is_official_dinov3(state):
        state = dinov3_to_timm(state, model)
    target = model.state_dict()
    state = dict(state)
    kernel = "patch_embed.proj.weight"
    if kernel in state and kernel in target and state[kernel].ndim == 4:
        state[kernel] = resize_grid(state[kernel], target[kernel].shape[-2:])
    if "pos_embed" in state and "pos_embed" in target:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], target["pos_embed"], _pos_prefix_tokens(model))
    return state


def load_vfm_weights(model: nn.Module, path: str | Path, config_key: str = "weights") -> tuple[list[str], list[str]]:
    """Load `path` into `model`; returns (missing, unexpected) keys, which are also logged."""
    return load_tensors(model, fit_to_model(read_state_dict(path, config_key), model), str(path), config_key)


def load_tensors(model: nn.Module, state: dict[str, Tensor], source: str,
                 config_key: str = "weights") -> tuple[list[str], list[str]]:
    """Load timm-named tensors (read from `source`) into `model`; returns (missing, unexpected).

    Tensors whose shapes still differ mean another architecture: all of them are listed in
    the error.
    """
    target = model.state_dict()
    mismatched = [f"  {k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    if mismatched:
        raise IncompatibleWeightsError(f"{config_key}: {source} does not fit this architecture; "
                                       f"{len(mismatched)} tensors differ in shape:\n" + "\n".join(mismatched))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        logger.warning("%s: %d model tensors not in %s (left as initialised): %s", config_key,
                       len(result.missing_keys), source, ", ".join(result.missing_keys))
    if result.unexpected_keys:
        logger.warning("%s: %d tensors in %s unused by the model: %s", config_key,
                       len(result.unexpected_keys), source, ", ".join(result.unexpected_keys))
    logger.info("%s: loaded %d tensors from %s", config_key, len(state) - len(result.unexpected_keys), source)
    return list(result.missing_keys), list(result.unexpected_keys)
