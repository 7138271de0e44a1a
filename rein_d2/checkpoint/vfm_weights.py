"""Load a vision foundation model's weights from a local file into a timm model.

Accepts timm checkpoints and the file each family's official config uses: the DINOv2 and
Meta's DINOv3 `.pth`, EVA02's checkpoint (as the official Rein converter takes it), OpenAI's
CLIP TorchScript archive (`ViT-L-14.pt`: its tensors, never its code), SAM's whole-model
`sam_vit_*.pth` (its `image_encoder.*`) and MAE's release (timm's names). The file's layout is
recognised by its key names (`LAYOUTS`) and renamed to timm's by timm's own converters. A
patch-embedding kernel or position grid of another size is resized the way the family's
official code does (bicubic, align_corners=False, no antialiasing; CLIP's grid bilinear), so
that patch-14 weights serve a patch-16 model. A file of another family is refused with the
tensors that differ. Files are read with safetensors or the restricted reader
(restricted_pickle.py), which never runs code from a file.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models import eva, vision_transformer, vision_transformer_sam
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


def is_official_eva02(state: dict[str, Tensor]) -> bool:
    """EVA02's own layout: separate q/k/v projections beside BEiT-style `q_bias` / `v_bias`."""
    return "blocks.0.attn.q_proj.weight" in state and "blocks.0.attn.q_bias" in state


def is_openai_clip(state: dict[str, Tensor]) -> bool:
    return "visual.class_embedding" in state


def is_official_sam(state: dict[str, Tensor]) -> bool:
    return "image_encoder.patch_embed.proj.weight" in state


def eva02_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """EVA02's names -> timm's, by timm's converter (`timm.models.eva`), once the kernel and the
    position grid have been resized as the official Rein converter does (`convert_eva2_512x512.py`;
    timm's converter would resample them its own way). Its pre-training head and mask token are
    dropped, its final norm becomes timm's `fc_norm`, the rotary tables are rebuilt by timm."""
    return eva.checkpoint_filter_fn(fit_grids(state, model), model)


def openai_clip_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """OpenAI CLIP's image tower (`visual.*`) -> timm's names, by timm's converter, in float32 as the
    official Rein code reads the half-precision release (`.float()`). The text tower is left out,
    and so is the image-text projection (`visual.proj`, timm's `head`) for a model without a head."""
    visual = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k.startswith("visual.")}
    target = model.state_dict()
    return {k: v for k, v in vision_transformer._convert_openai_clip(visual, model).items()
            if k in target or not k.startswith("head.")}


def sam_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """SAM's whole model -> its image encoder in timm's names, by timm's converter; the prompt
    encoder and the mask decoder are dropped."""
    return vision_transformer_sam.checkpoint_filter_fn(state, model)


@dataclass(frozen=True)
class WeightsLayout:
    """A release's key layout: how to recognise it, how it becomes timm's names, and how its
    family's official code resizes the position grid."""

    name: str
    matches: Callable[[dict[str, Tensor]], bool]
    to_timm: Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]
    grid_mode: str = "bicubic"


# The first that matches is the file's layout (EVA02's pre-training file has a mask token too).
LAYOUTS = (
    WeightsLayout("Meta's DINOv3", is_official_dinov3, dinov3_to_timm),
    WeightsLayout("official EVA02", is_official_eva02, eva02_to_timm),
    WeightsLayout("official DINOv2", is_official_dinov2, lambda state, model: dinov2_to_timm(state)),
    WeightsLayout("OpenAI CLIP", is_openai_clip, openai_clip_to_timm, grid_mode="bilinear"),
    WeightsLayout("Segment Anything (SAM)", is_official_sam, sam_to_timm),
)
TIMM_LAYOUT = WeightsLayout("timm (as MAE's release)", lambda state: True, lambda state, model: state)


def layout_of(state: dict[str, Tensor]) -> WeightsLayout:
    return next((layout for layout in LAYOUTS if layout.matches(state)), TIMM_LAYOUT)


def resize_grid(t: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Resize of the last two dims (align_corners=False, no antialiasing), as the official converters."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t.float(), size=size, mode=mode, align_corners=False).to(t.dtype)


def _pos_prefix_tokens(model: nn.Module) -> int:
    if getattr(model, "no_embed_class", False):
        return 0
    return getattr(model, "num_prefix_tokens", 0)


def resize_pos_embed(pos: Tensor, target: Tensor, num_prefix: int, mode: str = "bicubic") -> Tensor:
    """Resize a position grid to the model's: [1, P + H*W, C] token layout or [1, H, W, C] (SAM)."""
    if pos.shape == target.shape or pos.ndim != target.ndim:
        return pos  # another layout is reported as a shape mismatch
    if pos.ndim == 4:
        return resize_grid(pos.permute(0, 3, 1, 2), target.shape[1:3], mode).permute(0, 2, 3, 1)
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    side, target_side = int(grid.shape[1] ** 0.5), int((target.shape[1] - num_prefix) ** 0.5)
    if side * side != grid.shape[1] or target_side**2 != target.shape[1] - num_prefix:
        return pos  # not a square grid: reported as a shape mismatch
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = resize_grid(grid, (target_side, target_side), mode).permute(0, 2, 3, 1).reshape(1, target_side**2, -1)
    return torch.cat([prefix, grid], dim=1)


def fit_grids(state: dict[str, Tensor], model: nn.Module, mode: str = "bicubic") -> dict[str, Tensor]:
    """`state` with the patch kernel (bicubic) and the position grid (`mode`) resized to `model`'s."""
    target = model.state_dict()
    state = dict(state)
    kernel = "patch_embed.proj.weight"
    if kernel in state and kernel in target and state[kernel].ndim == 4:
        state[kernel] = resize_grid(state[kernel], target[kernel].shape[-2:])
    if "pos_embed" in state and "pos_embed" in target:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], target["pos_embed"], _pos_prefix_tokens(model), mode)
    return state


def _name_groups(keys: list[str], shown: int = 10) -> str:
    """Tensor names with block indices folded (`blocks.*.attn.rel_pos_h x32`), the first `shown` groups."""
    groups = Counter(re.sub(r"\.\d+\.", ".*.", key) for key in keys)
    names = [f"{name} x{count}" if count > 1 else name for name, count in groups.items()]
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def refuse_other_family(state: dict[str, Tensor], model: nn.Module, layout: WeightsLayout, source: str,
                        config_key: str) -> None:
    """A file that lacks some of the model's tensors while holding others it has no place for is
    another family's (a SAM file for a CLIP model): refused, naming both sides."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unused = [k for k in state if k not in target]
    if missing and unused:
        architecture = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise IncompatibleWeightsError(
            f"{config_key}: {source} holds {layout.name} weights, which are not {architecture}'s: "
            f"{len(missing)} of the model's tensors are not in the file ({_name_groups(missing)}) and "
            f"{len(unused)} of the file's have no place in the model ({_name_groups(unused)}); give the "
            "weights file of this backbone's family (README, Backbones), or the architecture of the file "
            "(MODEL.VIT.TIMM_NAME)")


def fit_to_model(state: dict[str, Tensor], model: nn.Module, source: str = "the file",
                 config_key: str = "weights") -> dict[str, Tensor]:
    """Timm-keyed tensors of a file (`source`) in any layout of `LAYOUTS`, resized to `model`'s
    patch kernel and position grid; a file of another family is refused."""
    layout = layout_of(state)
    logger.info("%s: %s holds %s weights", config_key, source, layout.name)
    state = layout.to_timm(state, model)
    refuse_other_family(state, model, layout, source, config_key)
    return fit_grids(state, model, layout.grid_mode)


def load_vfm_weights(model: nn.Module, path: str | Path, config_key: str = "weights") -> tuple[list[str], list[str]]:
    """Load `path` into `model`; returns (missing, unexpected) keys, which are also logged."""
    state = fit_to_model(read_state_dict(path, config_key), model, str(path), config_key)
    return load_tensors(model, state, str(path), config_key)


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
