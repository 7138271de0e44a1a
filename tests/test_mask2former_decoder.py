"""Decoder building blocks against their formulas: sine positions, residual sub-layers, masked attention,
pixel-decoder scales."""
import math

import pytest
import torch
from detectron2.layers import ShapeSpec

from rein_d2.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from rein_d2.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder, PositionEmbeddingSine
from rein_d2.modeling.transformer_decoder.mask2former_transformer_decoder import (
    CrossAttentionLayer,
    FFNLayer,
    SelfAttentionLayer,
)


def test_sine_positions_follow_the_detr_formula():
    npf, h, w = 6, 3, 5
    pos = PositionEmbeddingSine(npf, normalize=True)(torch.zeros(2, 1, h, w))
    assert pos.shape == (2, 2 * npf, h, w)
    for y, x, k in [(0, 0, 0), (2, 4, 3), (1, 3, 4), (2, 1, 5)]:
        freq = 10000 ** (2 * (k // 2) / npf)
        fy = (y + 1) / (h + 1e-6) * 2 * math.pi / freq
        fx = (x + 1) / (w + 1e-6) * 2 * math.pi / freq
        trig = math.sin if k % 2 == 0 else math.cos
        assert pos[1, k, y, x].item() == pytest.approx(trig(fy), abs=1e-6)
        assert pos[1, npf + k, y, x].item() == pytest.approx(trig(fx), abs=1e-6)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_residual_sublayers_place_the_norm_like_the_official_layers(pre_norm):
    torch.manual_seed(0)
    d = 8
    tgt, pos, memory, mem_pos = (torch.randn(2, n, d) for n in (3, 3, 5, 5))
    self_layer = SelfAttentionLayer(d, 2, normalize_before=pre_norm)
    cross_layer = CrossAttentionLayer(d, 2, normalize_before=pre_norm)
    ffn_layer = FFNLayer(d, 16, normalize_before=pre_norm)

    def attn(mha, q, k, v):
        return mha(q, k, v)[0]

    def ffn(x):
        return ffn_layer.linear2(torch.relu(ffn_layer.linear1(x)))

    if pre_norm:
        n = self_layer.norm(tgt)
        expected_self = tgt + attn(self_layer.self_attn, n + pos, n + pos, n)
        expected_cross = tgt + attn(cross_layer.multihead_attn, cross_layer.norm(tgt) + pos, memory + mem_pos, memory)
        expected_ffn = tgt + ffn(ffn_layer.norm(tgt))
    else:
        expected_self = self_layer.norm(tgt + attn(self_layer.self_attn, tgt + pos, tgt + pos, tgt))
        expected_cross = cross_layer.norm(tgt + attn(cross_layer.multihead_attn, tgt + pos, memory + mem_pos, memory))
        expected_ffn = ffn_layer.norm(tgt + ffn(tgt))
    torch.testing.assert_close(self_layer(tgt, pos), expected_self)
    torch.testing.assert_close(cross_layer(tgt, memory, None, mem_pos, pos), expected_cross)
    torch.testing.assert_close(ffn_layer(tgt), expected_ffn)


def small_decoder(num_heads=2):
    return MultiScaleMaskedTransformerDecoder(
        16, num_classes=3, hidden_dim=16, num_queries=4, nheads=num_heads, dim_feedforward=32, dec_layers=2,
        pre_norm=False, mask_dim=8, enforce_input_project=False)


def test_attention_mask_blocks_background_and_frees_queries_that_see_nothing():
    torch.manual_seed(0)
    decoder = small_decoder(num_heads=2)
    output = torch.randn(2, 4, 16)
    mask_features = torch.randn(2, 8, 4, 6)
    cls, masks, attn_mask = decoder.forward_prediction_heads(output, mask_features, (4, 6))
    assert cls.shape == (2, 4, 4) and masks.shape == (2, 4, 4, 6)
    assert attn_mask.shape == (2 * 2, 4, 24) and attn_mask.dtype == torch.bool
    expected = masks.flatten(2).sigmoid() < 0.5
    expected[expected.all(-1)] = False
    torch.testing.assert_close(attn_mask[0], expected[0])  # batch 0, head 0
    torch.testing.assert_close(attn_mask[1], expected[0])  # batch 0, head 1
    torch.testing.assert_close(attn_mask[3], expected[1])  # batch 1, head 1

    with torch.no_grad():  # every mask logit negative: nothing would be attended, so all is
        decoder.mask_embed.layers[-1].weight.zero_()
        decoder.mask_embed.layers[-1].bias.fill_(-1.0)
    _, masks, attn_mask = decoder.forward_prediction_heads(output, mask_features.abs(), (4, 6))
    assert (masks < 0).all() and not attn_mask.any()


def test_decoder_outputs_one_prediction_per_layer_plus_the_queries_own():
    torch.manual_seed(0)
    decoder = small_decoder()
    scales = [torch.randn(2, 16, s, s) for s in (2, 4, 8)]
    out = decoder(scales, torch.randn(2, 8, 16, 16))
    assert out["pred_logits"].shape == (2, 4, 4) and out["pred_masks"].shape == (2, 4, 16, 16)
    assert len(out["aux_outputs"]) == 2
    with pytest.raises(ValueError, match="3 feature scales"):
        decoder(scales[:2], torch.randn(2, 8, 16, 16))


def test_pixel_decoder_scales_and_mask_features():
    torch.manual_seed(0)
    shapes = {f"res{i + 2}": ShapeSpec(channels=c, stride=4 * 2**i) for i, c in enumerate([8, 16, 24, 40])}
    decoder = MSDeformAttnPixelDecoder(
        shapes, transformer_dropout=0.0, transformer_nheads=4, transformer_dim_feedforward=64, transformer_enc_layers=1,
        conv_dim=32, mask_dim=24, norm="GN", transformer_in_features=["res3", "res4", "res5"], common_stride=4)
    features = {name: torch.randn(2, s.channels, 64 // s.stride, 96 // s.stride) for name, s in shapes.items()}
    mask_features, coarsest, scales = decoder.forward_features(features)
    assert mask_features.shape == (2, 24, 16, 24)
    assert [tuple(s.shape) for s in scales] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert coarsest is scales[0]
    with pytest.raises(ValueError, match="res6"):
        MSDeformAttnPixelDecoder(
            shapes, transformer_dropout=0.0, transformer_nheads=4, transformer_dim_feedforward=64,
            transformer_enc_layers=1, conv_dim=32, mask_dim=24, transformer_in_features=["res6"], common_stride=4)
