"""Detectron2's FPN over ReinViT's res2..res5: the neck of the SemFPN rows (the paper's Table 14).

MMSeg's SemFPN neck is an FPN of 256 channels without normalisation over four levels; so is
Detectron2's `FPN` with MODEL.FPN.OUT_CHANNELS 256 and NORM "" (its defaults) and no top block.
ReinViT's features are resized patch-grid maps whose nominal strides 4..32 are exact only for
patch 16; the SemFPN head upsamples its stride-4 logits 4x to the image size, so other patch
sizes are refused. Rein's queries (REIN_QUERIES_KEY) have no place in an FPN: a refinement that
makes them (MODEL.REIN.LINK_TOKEN_TO_QUERY) is refused too, as its query layers would never get
a gradient (and would count as trainable parameters).
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.modeling import BACKBONE_REGISTRY, ShapeSpec
from detectron2.modeling.backbone.fpn import FPN

from ...errors import ConfigError
from .vit import NOMINAL_STRIDES, ReinViT

EXACT_STRIDES_PATCH_SIZE = 16  # ReinViT's nominal strides are its real ones at this patch size


@BACKBONE_REGISTRY.register()
def build_rein_vit_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ReinViT (MODEL.VIT, MODEL.REIN) under an FPN of MODEL.FPN.OUT_CHANNELS over MODEL.FPN.IN_FEATURES."""
    patch = cfg.MODEL.VIT.PATCH_SIZE
    if patch != EXACT_STRIDES_PATCH_SIZE:
        raise ConfigError(f"MODEL.VIT.PATCH_SIZE={patch}: the FPN backbone needs patch {EXACT_STRIDES_PATCH_SIZE}, "
                          f"where ReinViT's res2..res5 have their strides {list(NOMINAL_STRIDES)} exactly (the "
                          "configs convert patch-14 weights to 16 on load); set MODEL.VIT.PATCH_SIZE 16")
    bottom_up = ReinViT(cfg, input_shape)
    if bottom_up.reins is not None and bottom_up.reins.queries() is not None:
        raise ConfigError("the FPN backbone takes res2..res5 only, but the refinement makes queries for "
                          "Mask2Former (their layers would never be trained): set MODEL.REIN.LINK_TOKEN_TO_QUERY "
                          "False, or use MODEL.BACKBONE.NAME 'ReinViT' with the MaskFormer meta-architecture")
    fpn = cfg.MODEL.FPN
    outputs = list(bottom_up.output_shape())
    if not fpn.IN_FEATURES or any(name not in outputs for name in fpn.IN_FEATURES):
        raise ConfigError(f"MODEL.FPN.IN_FEATURES={list(fpn.IN_FEATURES)} must name ReinViT features, from high "
                          f"to low resolution, out of {outputs}: e.g. {outputs}")
    return FPN(bottom_up=bottom_up, in_features=fpn.IN_FEATURES, out_channels=fpn.OUT_CHANNELS, norm=fpn.NORM,
               top_block=None, fuse_type=fpn.FUSE_TYPE)
