"""Registry of Mask2Former transformer decoders, selected by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME."""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn

from ...errors import ConfigKeyError

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = "Transformer decoders: (cfg, in_channels, mask_classification) -> module."


def build_transformer_decoder(cfg: CfgNode, in_channels: int, mask_classification: bool = True) -> nn.Module:
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    if name not in TRANSFORMER_DECODER_REGISTRY:
        known = ", ".join(sorted(k for k, _ in TRANSFORMER_DECODER_REGISTRY))
        raise ConfigKeyError(f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME={name!r} is not registered in "
                       f"TRANSFORMER_DECODER_REGISTRY; registered: {known}")
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
