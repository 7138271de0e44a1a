"""The official Mask2Former head's inference, step by step, on the weights of rein-d2's modules.

The baseline that shows what rein-d2's head saves on the same weights, restated from the
official code (facebookresearch/Mask2Former) as it runs without its compiled CUDA op:

- position codes from cumulative sums over an all-valid mask, for every map and call;
- the encoder: all-valid padding masks, valid ratios and reference points made per call; in
  every layer the values projected and then masked by the padding mask, offsets and attention
  weights from two products, normalised locations, and the op's PyTorch core
  (`official_ms_deform_attn`: a layout copy and a grid_sample per level, stacked samples);
- the transformer decoder: attention that also returns its weights (the official layers ask
  for them), hence never the fused kernel, and the attention mask reopened by index assignment;
- post-processing: every query's mask upsampled at once before the class scores.

Modules whose computation is the same in both (projections, norms, feed-forward, FPN, the Rein
link's queries) are rein-d2's own; so is the batch-first layout of the attention modules.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..modeling.pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder, MSDeformAttnTransformer
from ..modeling.pixel_decoder.ms_deform_attn import MSDeformAttn
from ..modeling.transformer_decoder.mask2former_transformer_decoder import MultiScaleMaskedTransformerDecoder
from ..modeling.transformer_decoder.position_encoding import PositionEmbeddingSine
from .deform_attn import official_ms_deform_attn


def official_position_code(x: Tensor, pe: PositionEmbeddingSine) -> Tensor:
    """[B, C, H, W] sine code of x's grid, from running counts of an all-valid mask."""
    b, _, h, w = x.shape
    valid = ~torch.zeros(b, h, w, dtype=torch.bool, device=x.device)
    y_embed = valid.cumsum(1, dtype=torch.float32)
    x_embed = valid.cumsum(2, dtype=torch.float32)
    if pe.normalize:
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * pe.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * pe.scale
    freq = torch.arange(pe.num_pos_feats, dtype=torch.float32, device=x.device)
    freq = pe.temperature ** (2 * (freq // 2) / pe.num_pos_feats)

    def encode(embed: Tensor) -> Tensor:
        angles = embed[:, :, :, None] / freq
        return torch.stack((angles[:, :, :, 0::2].sin(), angles[:, :, :, 1::2].cos()), dim=4).flatten(3)

    return torch.cat((encode(y_embed), encode(x_embed)), dim=3).permute(0, 3, 1, 2)


def official_deform_attn(attn: MSDeformAttn, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                         spatial_shapes: Tensor, padding_mask: Tensor) -> Tensor:
    """One MSDeformAttn call as the official module makes it (reference points [N, Q, L, 2])."""
    n, queries, _ = query.shape
    m, levels, points = attn.n_heads, attn.n_levels, attn.n_points
    value = attn.value_proj(input_flatten).masked_fill(padding_mask[..., None], 0.0)
    value = value.view(n, input_flatten.shape[1], m, -1)
    offsets = attn.sampling_offsets(query).view(n, queries, m, levels, points, 2)
    weights = attn.attention_weights(query).view(n, queries, m, levels * points).softmax(-1)
    weights = weights.view(n, queries, m, levels, points)
    normaliser = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
    locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return attn.output_proj(official_ms_deform_attn(value, shapes, locations, weights))


def official_encoder(transformer: MSDeformAttnTransformer, srcs: list[Tensor], pos_embeds: list[Tensor]) -> list[Tensor]:
    """The encoder over the flattened levels; returns the encoded maps [N, C, H_l, W_l]."""
    masks = [torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.bool, device=x.device) for x in srcs]
    flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
    flat_mask = torch.cat([mask.flatten(1) for mask in masks], 1)
    flat_pos = torch.cat([pos.flatten(2).transpose(1, 2) + transformer.level_embed[lvl].view(1, 1, -1)
                          for lvl, pos in enumerate(pos_embeds)], 1)
    shapes = torch.as_tensor([src.shape[-2:] for src in srcs], dtype=torch.long, device=flat_src.device)
    valid_ratios = torch.stack([torch.stack([(~m[:, 0, :]).sum(1).float() / m.shape[2],
                                             (~m[:, :, 0]).sum(1).float() / m.shape[1]], -1) for m in masks], 1)
    refs = []
    for lvl, (h, w) in enumerate(shapes.tolist()):
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=flat_src.device),
                                      torch.linspace(0.5, w - 0.5, w, device=flat_src.device), indexing="ij")
        refs.append(torch.stack((ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w),
                                 ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)), -1))
    reference_points = torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]
    src = flat_src
    for layer in transformer.encoder.layers:
        attended = official_deform_attn(layer.self_attn, src + flat_pos, reference_points, src, shapes, flat_mask)
        src = layer.norm1(src + layer.dropout1(attended))
        src = layer.norm2(src + layer.dropout3(layer.linear2(layer.dropout2(F.relu(layer.linear1(src))))))
    n = src.shape[0]
    return [z.transpose(1, 2).view(n, -1, h, w)
            for z, (h, w) in zip(src.split(shapes.prod(1).tolist(), dim=1), shapes.tolist())]


def official_pixel_decoder(decoder: MSDeformAttnPixelDecoder,
                           features: dict[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """`MSDeformAttnPixelDecoder.forward_features` as the official one computes it (in float32, or in
    float64 for a model converted to it)."""
    with torch.autocast(device_type=next(iter(features.values())).device.type, enabled=False):
        srcs, pos = [], []
        for proj, name in zip(decoder.input_proj, reversed(decoder.transformer_in_features)):
            x = decoder.feature(features, name)
            srcs.append(proj(x))
            pos.append(official_position_code(x, decoder.pe_layer))
        return decoder.decode(official_encoder(decoder.transformer, srcs, pos), features)


def official_prediction_heads(predictor: MultiScaleMaskedTransformerDecoder, output: Tensor, mask_features: Tensor,
                              size: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
    decoded = predictor.decoder_norm(output)
    outputs_mask = torch.einsum("bqc,bchw->bqhw", predictor.mask_embed(decoded), mask_features)
    attn_mask = F.interpolate(outputs_mask, size=size, mode="bilinear", align_corners=False)
    attn_mask = attn_mask.sigmoid().flatten(2).unsqueeze(1).repeat(1, predictor.num_heads, 1, 1).flatten(0, 1) < 0.5
    return predictor.class_embed(decoded), outputs_mask, attn_mask.detach()


def official_transformer_decoder(predictor: MultiScaleMaskedTransformerDecoder, x: list[Tensor], mask_features: Tensor,
                                 queries: Tensor | None) -> tuple[Tensor, Tensor]:
    """The decoder's final (class logits, mask logits) as the official one computes them."""
    sizes = [f.shape[-2:] for f in x]
    pos = [official_position_code(f, predictor.pe_layer).flatten(2).transpose(1, 2) for f in x]
    src = [(proj(f).flatten(2) + predictor.level_embed.weight[i][None, :, None]).transpose(1, 2)
           for i, (proj, f) in enumerate(zip(predictor.input_proj, x))]
    output, query_pos = predictor._initial_queries(mask_features.shape[0], queries)
    outputs_class, outputs_mask, attn_mask = official_prediction_heads(predictor, output, mask_features, sizes[0])
    for i in range(predictor.num_layers):
        level = i % predictor.num_feature_levels
        attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
        cross = predictor.transformer_cross_attention_layers[i]
        output = cross._residual(output, lambda t: cross.multihead_attn(
            t + query_pos, src[level] + pos[level], src[level], attn_mask=attn_mask)[0])
        self_attn = predictor.transformer_self_attention_layers[i]
        output = self_attn._residual(output, lambda t: self_attn.self_attn(t + query_pos, t + query_pos, t)[0])
        output = predictor.transformer_ffn_layers[i](output)
        outputs_class, outputs_mask, attn_mask = official_prediction_heads(
            predictor, output, mask_features, sizes[(i + 1) % predictor.num_feature_levels])
    return outputs_class, outputs_mask


def official_semantic_scores(mask_cls: Tensor, mask_pred: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, K, H, W] class scores: every query's mask upsampled at once, then weighted by its class."""
    masks = F.interpolate(mask_pred, size=size, mode="bilinear", align_corners=False)
    return torch.stack([torch.einsum("qc,qhw->chw", cls.softmax(-1)[..., :-1], mask.sigmoid())
                        for cls, mask in zip(mask_cls, masks)])
