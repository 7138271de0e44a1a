"""MaskFormerHead: Mask2Former's pixel decoder followed by its transformer decoder."""
from __future__ import annotations

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

from ...errors import ConfigError
from ..pixel_decoder.build import build_pixel_decoder
from ..rein import REIN_QUERIES_KEY
from ..transformer_decoder.build import build_transformer_decoder

# The only transformer input of the Mask2Former decoder: the pixel decoder's three scales.
MULTI_SCALE_INPUT = "multi_scale_pixel_decoder"


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Backbone features (+ Rein's queries, if the backbone returns them) -> class and mask predictions."""

    @configurable
    def __init__(self, *, num_classes: int, pixel_decoder: nn.Module, transformer_predictor: nn.Module,
                 ignore_value: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict:
        in_feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if in_feature != MULTI_SCALE_INPUT:
            raise ConfigError(f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={in_feature!r} is not supported: the "
                             f"Mask2Former decoder reads the pixel decoder's scales; set it to {MULTI_SCALE_INPUT!r}")
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "num_classes": head.NUM_CLASSES,
            "ignore_value": head.IGNORE_VALUE,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
        }

    def forward(self, features: dict[str, Tensor]) -> dict:
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features, features.get(REIN_QUERIES_KEY))
