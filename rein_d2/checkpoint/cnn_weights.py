"""The official CNN releases the Rein configs start from, renamed to timm's modules.

MMSegmentation's ResNetV1c (`open-mmlab://resnet50_v1c`, ...: a deep stem `stem.0..7`, then
torchvision's `layer<i>` names) and MMPretrain's ConvNeXt (`downsample_layers`, `stages.<i>.<j>`
with `depthwise_conv` / `pointwise_conv<k>`, stage norms `norm<i>`, usually under `backbone.`)
map one to one onto timm's `resnet*c` and `convnext_*`. The stage norms become `out_norms.<i>`,
which ReinCNN holds. timm files pass unchanged.
"""
from __future__ import annotations

import re

from torch import Tensor

# MMSeg's deep stem: conv, BN, ReLU, three times; timm's: conv1.{0,1,3,4,6} and bn1.
MMSEG_STEM = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
              "stem.6.": "conv1.6.", "stem.7.": "bn1."}
MMPRETRAIN_BLOCK = {"depthwise_conv": "conv_dw", "pointwise_conv1": "mlp.fc1", "pointwise_conv2": "mlp.fc2"}
_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(\w+)\.(.+)$")
_DOWNSAMPLE = re.compile(r"^downsample_layers\.(\d+)\.(\d)\.(.+)$")
_STAGE_NORM = re.compile(r"^norm(\d)\.(.+)$")


def is_mmseg_resnet(state: dict[str, Tensor]) -> bool:
    return "stem.0.weight" in state and "layer1.0.conv1.weight" in state


def is_mmpretrain_convnext(state: dict[str, Tensor]) -> bool:
    return "downsample_layers.0.0.weight" in state


def mmseg_resnet_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Stem renamed; the residual layers have the same names; the classifier (fc) is dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        prefix = next((p for p in MMSEG_STEM if key.startswith(p)), None)
        out[MMSEG_STEM[prefix] + key[len(prefix):] if prefix else key] = value
    return out


def _convnext_name(key: str) -> str | None:
    """timm's name of one MMPretrain ConvNeXt tensor (None: the classifier head)."""
    if key.startswith("head."):
        return None
    if m := _DOWNSAMPLE.match(key):
        stage, index, rest = int(m[1]), int(m[2]), m[3]
        return f"stem.{index}.{rest}" if stage == 0 else f"stages.{stage}.downsample.{index}.{rest}"
    if m := _BLOCK.match(key):
        return f"stages.{m[1]}.blocks.{m[2]}.{MMPRETRAIN_BLOCK.get(m[3], m[3])}.{m[4]}"
    if m := re.match(r"^stages\.(\d+)\.(\d+)\.gamma$", key):
        return f"stages.{m[1]}.blocks.{m[2]}.gamma"
    if m := _STAGE_NORM.match(key):
        return f"out_norms.{m[1]}.{m[2]}"
    return key


def mmpretrain_convnext_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: value for key, value in state.items() if (name := _convnext_name(key)) is not None}


def official_cnn_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip MMPretrain's `backbone.` prefix, then rename an official layout (if it is one)."""
    if state and all(k.startswith(("backbone.", "head.")) for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    if is_mmseg_resnet(state):
        return mmseg_resnet_to_timm(state)
    if is_mmpretrain_convnext(state):
        return mmpretrain_convnext_to_timm(state)
    return state
