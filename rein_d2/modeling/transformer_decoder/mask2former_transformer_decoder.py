"""Mask2Former's transformer decoder: masked cross-attention over three scales, round robin.

Names follow the official MultiScaleMaskedTransformerDecoder (`query_feat`, `query_embed`,
`level_embed`, `transformer_{self,cross}_attention_layers.N`, `transformer_ffn_layers.N`,
`decoder_norm`, `class_embed`, `mask_embed.layers.N`), so official checkpoints load.
With the Rein link on, the learned queries are replaced as in the official Rein head
(ReinMask2FormerHead, replace_query_feat=True): Rein's queries are the query positions
and `querys2feat(queries)` the query contents.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ConfigError
from .build import TRANSFORMER_DECODER_REGISTRY
from .position_encoding import PositionEmbeddingSine

NUM_SCALES = 3


def check_num_classes(state_dict: Mapping[str, Tensor], num_classes: int, prefix: str = "") -> None:
    """Fail early, naming both numbers, when a checkpoint's classifier has another class count.

    `prefix` is the predictor's key prefix, e.g. "sem_seg_head.predictor.".
    """
    weight = state_dict.get(prefix + "class_embed.weight")
    if weight is not None and weight.shape[0] != num_classes + 1:
        raise ValueError(
            f"checkpoint key {prefix}class_embed.weight is for {weight.shape[0] - 1} classes (+1 no-object), "
            f"but MODEL.SEM_SEG_HEAD.NUM_CLASSES is {num_classes}: set NUM_CLASSES to {weight.shape[0] - 1}, "
            f"or drop {prefix}class_embed.* from the checkpoint to train a new classifier")


class _ResidualSublayer(nn.Module):
    """x + dropout(f(x)) with LayerNorm after the sum (post-norm, default) or on f's input (pre-norm)."""

    def __init__(self, d_model: int, dropout: float, normalize_before: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _xavier_init(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _residual(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.normalize_before:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class SelfAttentionLayer(_ResidualSublayer):
    """Queries attend to each other; positions are added to queries and keys, not values."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__(d_model, dropout, normalize_before)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self._xavier_init()

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        def attend(x: Tensor) -> Tensor:
            qk = x + query_pos
            return self.self_attn(qk, qk, x, need_weights=False)[0]

        return self._residual(tgt, attend)


class CrossAttentionLayer(_ResidualSublayer):
    """Queries attend to one scale of pixel features, restricted by the previous layer's masks."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__(d_model, dropout, normalize_before)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self._xavier_init()

    def forward(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None, pos: Tensor,
                query_pos: Tensor) -> Tensor:
        def attend(x: Tensor) -> Tensor:
            return self.multihead_attn(x + query_pos, memory + pos, memory, attn_mask=memory_mask,
                                       need_weights=False)[0]

        return self._residual(tgt, attend)


class FFNLayer(_ResidualSublayer):
    """Two-layer ReLU feed-forward."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 normalize_before: bool = False) -> None:
        super().__init__(d_model, dropout, normalize_before)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self._xavier_init()

    def forward(self, tgt: Tensor) -> Tensor:
        return self._residual(tgt, lambda x: self.linear2(self.dropout(F.relu(self.linear1(x)))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (not after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Queries -> per layer: masked cross-attention, self-attention, FFN, then class and mask predictions."""

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        link_token_to_query: bool = False,
    ) -> None:
        """`dec_layers` counts attention layers (the config's DEC_LAYERS minus the query-only loss).

        With `link_token_to_query`, the queries come from the backbone (Rein) at run time and
        `querys2feat` maps them to query contents; there is then no learned `query_feat` or
        `query_embed`, as in the official Rein head (no unused parameters, same keys).
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        self.mask_classification = mask_classification
        self.num_classes = num_classes
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, normalize_before=pre_norm) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, normalize_before=pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.link_token_to_query = link_token_to_query
        if link_token_to_query:
            self.querys2feat = nn.Linear(hidden_dim, hidden_dim)
        else:
            self.query_feat = nn.Embedding(num_queries, hidden_dim)
            self.query_embed = nn.Embedding(num_queries, hidden_dim)

        self.num_feature_levels = NUM_SCALES
        self.level_embed = nn.Embedding(NUM_SCALES, hidden_dim)
        self.input_proj = nn.ModuleList()
        # Layer i attends to scale i % 3: with fewer layers than scales, the scales no layer reads
        # get no projection (it would never receive a gradient, which DDP refuses).
        for _ in range(min(NUM_SCALES, dec_layers)):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg: CfgNode, in_channels: int, mask_classification: bool) -> dict:
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ConfigError(f"MODEL.MASK_FORMER.DEC_LAYERS={mf.DEC_LAYERS}: it counts the loss on the "
                             "learned queries plus one per decoder layer, so it must be >= 1 (official: 10)")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "link_token_to_query": cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY,
        }

    def check_checkpoint(self, state_dict: Mapping[str, Tensor], prefix: str) -> None:
        """Called by rein-d2's checkpointer before loading, when mismatched shapes are still visible."""
        check_num_classes(state_dict, self.num_classes, prefix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        self.check_checkpoint(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _initial_queries(self, batch_size: int, queries: Tensor | None) -> tuple[Tensor, Tensor]:
        """(contents, positions) [B, Q, C] of the queries: learned, or derived from Rein's tokens."""
        if not self.link_token_to_query:
            if queries is not None:
                raise ConfigError("the backbone returned Rein queries but the decoder was built without the link "
                                 "(MODEL.REIN.LINK_TOKEN_TO_QUERY False): set it True to use them, or build the "
                                 "backbone's Rein without queries")
            return (self.query_feat.weight.unsqueeze(0).expand(batch_size, -1, -1),
                    self.query_embed.weight.unsqueeze(0).expand(batch_size, -1, -1))
        if queries is None:
            raise ConfigError("MODEL.REIN.LINK_TOKEN_TO_QUERY is True, so the decoder takes its queries from the "
                             "backbone, but the backbone returned none (e.g. MODEL.VIT.FINETUNE 'freeze' or "
                             "'full' has no Rein): set MODEL.REIN.LINK_TOKEN_TO_QUERY False for learned queries")
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(batch_size, -1, -1)
        if queries.shape != (batch_size, self.num_queries, self.hidden_dim):
            raise ConfigError(f"Rein queries of shape {tuple(queries.shape)} do not fit the decoder's "
                             f"[{self.num_queries}, {self.hidden_dim}]: MODEL.REIN.TOKEN_LENGTH must equal "
                             "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES and Rein's query width MODEL.MASK_FORMER.HIDDEN_DIM")
        return self.querys2feat(queries), queries

    def forward(self, x: list[Tensor], mask_features: Tensor, queries: Tensor | None = None) -> dict:
        """x: three scales [B, C, H_l, W_l], coarsest first; mask_features [B, mask_dim, H, W];
        queries: Rein's [Q, hidden_dim] (or [B, Q, hidden_dim]) when linked."""
        if len(x) != self.num_feature_levels:
            raise ValueError(f"MultiScaleMaskedTransformerDecoder needs {self.num_feature_levels} feature scales, "
                             f"got {len(x)}")
        sizes = [f.shape[-2:] for f in x]
        read = x[:len(self.input_proj)]  # the scales some layer attends to
        pos = [self.pe_layer(f).flatten(2).transpose(1, 2) for f in read]
        src = [proj(f).flatten(2).transpose(1, 2) + self.level_embed.weight[i]
               for i, (proj, f) in enumerate(zip(self.input_proj, read))]
        output, query_pos = self._initial_queries(mask_features.shape[0], queries)
        targets = [sizes[(i + 1) % self.num_feature_levels] for i in range(-1, self.num_layers)]
        if not self.training:
            # Only the last prediction leaves at inference; the others serve as attention masks, at the
            # attention's resolution: from the mask features resized once per scale, which equals
            # resizing full-resolution masks (bilinear resizing is linear) at a fraction of the cost.
            resized = {tuple(s): F.interpolate(mask_features, size=s, mode="bilinear", align_corners=False)
                       for s in sizes}
            for i in range(self.num_layers):
                logits = self.mask_logits(self.decoder_norm(output), resized[tuple(targets[i])])
                output = self._layer(i, output, src, pos, self.attention_mask(logits), query_pos)
            outputs_class, outputs_mask = self.predictions(output, mask_features)
            return {"pred_logits": outputs_class, "pred_masks": outputs_mask, "aux_outputs": []}

        predictions_class, predictions_mask = [], []
        for i in range(-1, self.num_layers):
            if i >= 0:
                output = self._layer(i, output, src, pos, attn_mask, query_pos)
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(output, mask_features,
                                                                                   targets[i + 1])
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)
        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m}
                            for c, m in zip(predictions_class[:-1], predictions_mask[:-1])],
        }

    def _layer(self, i: int, output: Tensor, src: list[Tensor], pos: list[Tensor], attn_mask: Tensor,
               query_pos: Tensor) -> Tensor:
        """Decoder layer i: masked cross-attention to scale i % 3, self-attention, feed-forward."""
        level = i % self.num_feature_levels
        output = self.transformer_cross_attention_layers[i](output, src[level], attn_mask, pos[level], query_pos)
        output = self.transformer_self_attention_layers[i](output, query_pos)
        return self.transformer_ffn_layers[i](output)

    def forward_prediction_heads(self, output: Tensor, mask_features: Tensor,
                                 attn_mask_target_size: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
        """Class logits [B, Q, K+1], mask logits [B, Q, H, W], and the next layer's attention mask."""
        outputs_class, outputs_mask = self.predictions(output, mask_features)
        with torch.no_grad():
            resized = F.interpolate(outputs_mask, size=attn_mask_target_size, mode="bilinear", align_corners=False)
        return outputs_class, outputs_mask, self.attention_mask(resized)

    def predictions(self, output: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits [B, Q, K+1] and mask logits [B, Q, H, W] of the queries `output`."""
        decoded = self.decoder_norm(output)
        return self.class_embed(decoded), self.mask_logits(decoded, mask_features)

    def mask_logits(self, decoded: Tensor, features: Tensor) -> Tensor:
        """[B, Q, h, w]: the normalised queries' mask embeddings against features [B, C, h, w]."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), features)

    def attention_mask(self, mask_logits: Tensor) -> Tensor:
        """[B*heads, Q, h*w] attention mask from mask logits [B, Q, h, w] at the attention's resolution.

        The mask blocks (True) the pixels a query predicts as background at the next scale;
        a query that would block everything attends everywhere instead.
        """
        with torch.no_grad():
            blocked = mask_logits.sigmoid().flatten(2) < 0.5
            # As a product of masks, not an index assignment: it exports to ONNX as And/Not.
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
            return blocked.repeat_interleave(self.num_heads, dim=0)
