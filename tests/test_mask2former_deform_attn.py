"""Pure-PyTorch multi-scale deformable attention against a naive per-point reference.

The reference (rein_d2.benchmark.deform_attn, shared with tools/benchmark.py) restates the
official CUDA op: a location l in [0, 1] reads pixel l * size - 0.5 of its level,
bilinearly, zeros outside the map.
"""
import pytest
import torch

from rein_d2.benchmark.deform_attn import per_point_ms_deform_attn as naive_ms_deform_attn
from rein_d2.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn, ms_deform_attn
from rein_d2.modeling.pixel_decoder.msdeformattn import MSDeformAttnEncoder

SHAPES = [(4, 5), (3, 2), (1, 3)]


def random_inputs(n=2, queries=3, heads=2, dim=3, points=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, total, heads, dim, generator=g, dtype=torch.float64)
    # Some locations fall outside [0, 1] to exercise the zero padding.
    locations = torch.rand(n, queries, heads, len(SHAPES), points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(n, queries, heads, len(SHAPES), points, generator=g, dtype=torch.float64)
    return value, locations, weights


def test_forward_equals_naive_reference():
    value, locations, weights = random_inputs()
    fast = ms_deform_attn(value, SHAPES, locations, weights)
    slow = naive_ms_deform_attn(value, SHAPES, locations, weights)
    assert fast.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_backward_equals_naive_reference():
    inputs = [t.requires_grad_() for t in random_inputs(seed=1)]
    grad_out = torch.randn(2, 3, 6, dtype=torch.float64)
    fast = torch.autograd.grad(ms_deform_attn(inputs[0], SHAPES, *inputs[1:]), inputs, grad_out)
    slow = torch.autograd.grad(naive_ms_deform_attn(inputs[0], SHAPES, *inputs[1:]), inputs, grad_out)
    for name, f, s in zip(("value", "locations", "weights"), fast, slow):
        torch.testing.assert_close(f, s, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")
    assert fast[1].abs().sum() > 0


def test_gradcheck_against_finite_differences():
    inputs = tuple(t.requires_grad_() for t in random_inputs(n=1, queries=2, seed=2))
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, SHAPES, loc, w), inputs)


def test_coordinate_convention_of_the_official_op():
    """Pixel centres read exact values; location 0 is the left edge of pixel 0 (half of it, half zeros)."""
    value = torch.arange(1.0, 5.0).view(1, 4, 1, 1)  # one 1x4 level
    xs = torch.tensor([0.125, 0.375, 0.875, 0.0, 0.25, 1.0])
    locations = torch.stack([xs, torch.full_like(xs, 0.5)], -1).view(1, 6, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(1, 4)], locations, torch.ones(1, 6, 1, 1, 1))
    torch.testing.assert_close(out.view(-1), torch.tensor([1.0, 2.0, 4.0, 0.5, 1.5, 2.0]))


def test_shape_mismatch_is_reported():
    value, locations, weights = random_inputs()
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, SHAPES[:2], locations, weights)


def test_initial_offsets_follow_the_official_rays():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=8, n_points=3)
    bias = attn.sampling_offsets.bias.view(8, 2, 3, 2)
    # Head 1 looks at 45 degrees: (1, 1) per unit distance; head 2 straight down; points at 1, 2, 3.
    torch.testing.assert_close(bias[1, 1, 2], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(bias[2, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[4, 0, 1], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    assert attn.sampling_offsets.weight.abs().sum() == 0 and attn.attention_weights.weight.abs().sum() == 0


def test_module_with_zero_offsets_reads_reference_points():
    """With zero offsets and uniform attention, the output is the projected value at the reference point."""
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=4, n_levels=1, n_heads=2, n_points=2).double()
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    src = torch.randn(1, 6, 4, dtype=torch.float64)  # one 2x3 level
    refs = MSDeformAttnEncoder.reference_points([(2, 3)], src.device).double()
    out = attn(src, refs, src, [(2, 3)])
    torch.testing.assert_close(out, attn.output_proj(attn.value_proj(src)))


def test_reference_points_are_pixel_centres():
    refs = MSDeformAttnEncoder.reference_points([(2, 4), (1, 2)], torch.device("cpu"))
    assert refs.shape == (1, 10, 1, 2)
    torch.testing.assert_close(refs[0, :4, 0], torch.tensor([[0.125, 0.25], [0.375, 0.25], [0.625, 0.25],
                                                             [0.875, 0.25]]))
    torch.testing.assert_close(refs[0, 8:, 0], torch.tensor([[0.25, 0.5], [0.75, 0.5]]))
