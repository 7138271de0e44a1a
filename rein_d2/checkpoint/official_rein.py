"""Key mapping from the official Rein releases (MMSegmentation) to rein-d2's Mask2Former.

The official checkpoints hold `backbone.reins.*` (same names here) and `decode_head.*` of
MMSegmentation's Mask2FormerHead, whose pixel decoder and transformer layers come from
MMDetection. Each rule below maps one family of MMDetection names onto the official
Mask2Former (Detectron2) names; a key that no rule maps is an error, never dropped.
Frozen DINOv2 weights, when a checkpoint carries them, go to `backbone.vit.*` in timm's
naming.

Two kinds of released tensors have nothing to load into and are left out with a note: the
official Reins always creates `transform` and `merge` (its queries for the head), so releases
trained without the query link carry them too, while rein-d2 creates them only with
MODEL.REIN.LINK_TOKEN_TO_QUERY; and a release that carries the frozen VFM carries its final
norm, which the backbone never runs (its features are the blocks' outputs), so rein-d2 prunes it.
"""
from __future__ import annotations

import re
from collections.abc import Container

from torch import Tensor

from ..errors import ReinD2Error
from .vfm_weights import dinov2_to_timm

HEAD, PIXEL, PRED = "decode_head.", "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
ENC = PIXEL + "transformer.encoder.layers."

# (MMSegmentation / MMDetection pattern, Detectron2 Mask2Former replacement)
RULES: tuple[tuple[str, str], ...] = (
    (r"backbone\.reins\.(.+)", r"backbone.reins.\1"),
    # pixel decoder: input projections, deformable encoder, FPN level, mask features
    (HEAD + r"pixel_decoder\.input_convs\.(\d+)\.conv\.(weight|bias)", PIXEL + r"input_proj.\1.0.\2"),
    (HEAD + r"pixel_decoder\.input_convs\.(\d+)\.gn\.(weight|bias)", PIXEL + r"input_proj.\1.1.\2"),
    (HEAD + r"pixel_decoder\.level_encoding\.weight", PIXEL + "transformer.level_embed"),
    (HEAD + r"pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.(\w+)\.(weight|bias)", ENC + r"\1.self_attn.\2.\3"),
    (HEAD + r"pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)", ENC + r"\1.linear1.\2"),
    (HEAD + r"pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)", ENC + r"\1.linear2.\2"),
    (HEAD + r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.(weight|bias)", ENC + r"\1.norm1.\2"),
    (HEAD + r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.(weight|bias)", ENC + r"\1.norm2.\2"),
    (HEAD + r"pixel_decoder\.lateral_convs\.0\.conv\.weight", PIXEL + "adapter_1.weight"),
    (HEAD + r"pixel_decoder\.lateral_convs\.0\.gn\.(weight|bias)", PIXEL + r"adapter_1.norm.\1"),
    (HEAD + r"pixel_decoder\.output_convs\.0\.conv\.weight", PIXEL + "layer_1.weight"),
    (HEAD + r"pixel_decoder\.output_convs\.0\.gn\.(weight|bias)", PIXEL + r"layer_1.norm.\1"),
    (HEAD + r"pixel_decoder\.mask_feature\.(weight|bias)", PIXEL + r"mask_features.\1"),
    # transformer decoder: MMDetection runs cross-attention, norms.0, self-attention, norms.1, FFN, norms.2
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.self_attn\.attn\.(.+)",
     PRED + r"transformer_self_attention_layers.\1.self_attn.\2"),
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.cross_attn\.attn\.(.+)",
     PRED + r"transformer_cross_attention_layers.\1.multihead_attn.\2"),
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)",
     PRED + r"transformer_ffn_layers.\1.linear1.\2"),
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)",
     PRED + r"transformer_ffn_layers.\1.linear2.\2"),
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.norms\.0\.(weight|bias)",
     PRED + r"transformer_cross_attention_layers.\1.norm.\2"),
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.norms\.1\.(weight|bias)",
     PRED + r"transformer_self_attention_layers.\1.norm.\2"),
    (HEAD + r"transformer_decoder\.layers\.(\d+)\.norms\.2\.(weight|bias)", PRED + r"transformer_ffn_layers.\1.norm.\2"),
    (HEAD + r"transformer_decoder\.post_norm\.(weight|bias)", PRED + r"decoder_norm.\1"),
    # queries and prediction heads
    (HEAD + r"(query_feat|query_embed|level_embed|querys2feat)\.(weight|bias)", PRED + r"\1.\2"),
    (HEAD + r"cls_embed\.(weight|bias)", PRED + r"class_embed.\1"),
    (HEAD + r"mask_embed\.0\.(weight|bias)", PRED + r"mask_embed.layers.0.\1"),
    (HEAD + r"mask_embed\.2\.(weight|bias)", PRED + r"mask_embed.layers.1.\1"),
    (HEAD + r"mask_embed\.4\.(weight|bias)", PRED + r"mask_embed.layers.2.\1"),
)
COMPILED = tuple((re.compile(pattern + "$"), replacement) for pattern, replacement in RULES)
FROZEN_BACKBONE = re.compile(r"backbone\.(?!reins\.)(.+)$")
# (released names the model may lack, why they are not needed)
UNUSED_TENSORS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"backbone\.reins\.(transform|merge)\."),
     "Rein's query layers, which the official Reins always creates; this config's model has none "
     "(MODEL.REIN.LINK_TOKEN_TO_QUERY is False), and a release trained without the query link does not use them"),
    (re.compile(r"backbone\.vit\.(norm|fc_norm|head)\."),
     "the VFM's final norm and head, which the backbone does not run (its features are the blocks' outputs)"),
)


class UnmappedKeysError(ReinD2Error, KeyError):
    """Official keys that no rule knows: converting them silently would lose weights."""


def map_key(key: str) -> str | None:
    for pattern, replacement in COMPILED:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def convert_official_rein(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """rein-d2 state dict of an official Rein checkpoint; raises on any unmapped key."""
    converted, frozen, unmapped = {}, {}, []
    for key, tensor in state.items():
        frozen_match = FROZEN_BACKBONE.match(key)
        if frozen_match:
            frozen[frozen_match[1]] = tensor
            continue
        new_key = map_key(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    if unmapped:
        raise UnmappedKeysError(f"{len(unmapped)} keys of the official checkpoint have no rein-d2 counterpart: "
                                + ", ".join(sorted(unmapped)))
    converted.update({f"backbone.vit.{k}": v for k, v in dinov2_to_timm(frozen).items()})
    return converted


def drop_unused_tensors(state: dict[str, Tensor],
                        model_keys: Container[str]) -> tuple[dict[str, Tensor], list[str]]:
    """(state without the UNUSED_TENSORS the model lacks, one note per kind left out)."""
    notes, dropped = [], set()
    for pattern, reason in UNUSED_TENSORS:
        names = [k for k in state if pattern.match(k) and k not in model_keys]
        if names:
            notes.append(f"left out {len(names)} tensors ({', '.join(sorted(names)[:4])}"
                         f"{', ...' if len(names) > 4 else ''}): {reason}")
            dropped.update(names)
    return {k: v for k, v in state.items() if k not in dropped}, notes
