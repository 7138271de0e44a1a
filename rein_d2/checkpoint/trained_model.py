"""The model a config describes, with its trained weights: what the demo runs and the ONNX export exports."""
from __future__ import annotations

import os

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from torch import nn

from ..errors import ConfigError
from .compact import CompactCheckpointer


def build_trained_model(cfg: CfgNode) -> nn.Module:
    """`build_model(cfg)` in eval mode with MODEL.WEIGHTS (a path or a URL) loaded, if set."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS file {weights} not found; give the path of a trained checkpoint "
                          "(e.g. --opts MODEL.WEIGHTS output/model_final.pth)")
    model = build_model(cfg).eval()
    if weights:
        CompactCheckpointer(model).load(weights)
    return model
