"""Builds the pixel decoder named by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME.

Pixel decoders live in Detectron2's SEM_SEG_HEADS_REGISTRY (as in the official code) and
are the entries with a `forward_features` method.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ...errors import ConfigKeyError


def registered_pixel_decoders() -> list[str]:
    return sorted(name for name, cls in SEM_SEG_HEADS_REGISTRY if callable(getattr(cls, "forward_features", None)))


def build_pixel_decoder(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    if name not in registered_pixel_decoders():
        raise ConfigKeyError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name!r} is not a registered pixel decoder "
                       f"(SEM_SEG_HEADS_REGISTRY entries with forward_features); registered: "
                       f"{', '.join(registered_pixel_decoders())}")
    return SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
