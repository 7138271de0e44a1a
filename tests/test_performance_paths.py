"""Every fast path gives the plain path's outputs (and gradients) within its dtype's tolerance.

Rein's folded inference, its weights-only cache at the backbone level, timm's fused attention
in every VFM family, Mask2Former's attention through scaled_dot_product_attention, inference
under autocast, activation checkpointing and torch.compile. Timings are tools/benchmark.py's job.
"""
import shutil

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from test_backbone import FAMILIES, tiny_cfg
from test_mask2former_reinvit import batch, tiny_reinvit_cfg
from timm.layers import set_reentrant_ckpt

from rein_d2.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn
from rein_d2.modeling.rein import LoRAReins, Reins
from rein_d2.modeling.transformer_decoder.mask2former_transformer_decoder import CrossAttentionLayer, SelfAttentionLayer

FEATURES = ("res2", "res3", "res4", "res5")


def tiny_rein(cls=LoRAReins, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    args = dict(num_layers=3, embed_dims=16, patch_size=16, query_dims=8, token_length=5, **kw)
    if cls is LoRAReins:
        args["lora_dim"] = 4
    rein = cls(**args).to(dtype)
    if isinstance(rein.scale, torch.nn.Parameter):
        with torch.no_grad():
            rein.scale.fill_(0.37)  # a visible update
    return rein


def plain(rein, feats, layer, num_prefix_tokens=0):
    """The path autograd trains through: the official equations, step by step."""
    with torch.enable_grad():
        return rein(feats, layer, num_prefix_tokens=num_prefix_tokens).detach()


@pytest.mark.parametrize("cls", [Reins, LoRAReins])
@pytest.mark.parametrize("options", [{}, {"use_softmax": False}, {"zero_mlp_delta_f": True}])
def test_folded_inference_equals_the_equations(cls, options):
    """float64 shows the folding is exact algebra: only rounding separates the two paths."""
    rein = tiny_rein(cls, torch.float64, **options)
    if options.get("zero_mlp_delta_f"):
        torch.nn.init.normal_(rein.mlp_delta_f.weight)  # otherwise the update is zero
    feats = torch.randn(2, 1 + 7, 16, dtype=torch.float64)
    for layer in range(3):
        with torch.no_grad():
            fast = rein(feats, layer, num_prefix_tokens=1)
        torch.testing.assert_close(fast, plain(rein, feats, layer, 1), rtol=1e-12, atol=1e-12)
        assert torch.equal(fast[:, 0], feats[:, 0])
        assert not torch.allclose(fast[:, 1:], feats[:, 1:])


def test_folded_inference_in_float32_and_prefix_tokens_pass_through():
    rein = tiny_rein()
    feats = torch.randn(3, 4 + 9, 16)
    with torch.no_grad():
        fast = rein(feats, 2, num_prefix_tokens=4)
        patches_only = rein(feats[:, 4:].contiguous(), 2)
    torch.testing.assert_close(fast, plain(rein, feats, 2, 4), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[:, 4:], patches_only)
    assert torch.equal(fast[:, :4], feats[:, :4])


def test_folded_inference_under_autocast_keeps_the_residual_in_float32():
    rein = tiny_rein()
    feats = torch.randn(2, 9, 16)
    with torch.no_grad():
        fp32 = rein(feats, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = rein(feats, 1)
        again = rein(feats, 1)  # the cache is keyed on the autocast state: no bfloat16 leaks back
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=2e-2)
    assert torch.equal(again, fp32)


# ------------------------------------------------------------------ backbone-level cache
def tiny_backbone(**vit):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg(**vit))
    with torch.no_grad():
        backbone.reins.scale.fill_(0.5)
    return backbone


def features(backbone, x, grad=False):
    with torch.set_grad_enabled(grad):
        out = backbone(x)
    return {k: v.detach() for k, v in out.items()}


def assert_features_close(a, b, **tol):
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tol, msg=name)


def test_backbone_cache_is_refreshed_after_an_optimizer_step():
    backbone = tiny_backbone().eval()
    x = torch.randn(1, 3, 64, 64)
    before = features(backbone, x)
    backbone.train()
    optimizer = torch.optim.SGD(backbone.reins.parameters(), lr=1.0)
    out = backbone(x)
    (sum(out[n].square().mean() for n in FEATURES) + out["rein_queries"].square().mean()).backward()
    optimizer.step()
    backbone.eval()
    after = features(backbone, x)
    assert not torch.allclose(before["res5"], after["res5"], atol=1e-4)
    assert not torch.allclose(before["rein_queries"], after["rein_queries"], atol=1e-4)
    assert_features_close(after, features(backbone, x, grad=True), rtol=1e-4, atol=1e-5)


def test_backbone_cache_is_refreshed_after_loading_weights():
    backbone, other = tiny_backbone().eval(), tiny_backbone().eval()
    with torch.no_grad():
        for p in other.reins.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(1, 3, 64, 64)
    features(backbone, x)  # fills the cache with the old weights
    backbone.load_state_dict(other.state_dict())
    assert_features_close(features(backbone, x), features(other, x), rtol=1e-5, atol=1e-6)
    assert_features_close(features(backbone, x), features(backbone, x, grad=True), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ scaled_dot_product_attention
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_uses_fused_attention_and_it_equals_the_explicit_one(family):
    backbone = tiny_backbone(**FAMILIES[family]).eval()
    attns = [block.attn for block in backbone.vit.blocks]
    assert all(attn.fused_attn for attn in attns), "timm's fused attention is off"
    x = torch.randn(1, 3, 64, 64)
    fused = features(backbone, x)
    for attn in attns:
        attn.fused_attn = False
    assert_features_close(fused, features(backbone, x), rtol=1e-4, atol=1e-5)


def test_mask2former_attention_runs_through_scaled_dot_product_attention():
    """nn.MultiheadAttention with need_weights=False hands q, k, v (and the boolean mask) to SDPA."""
    torch.manual_seed(0)
    cross, self_attn = CrossAttentionLayer(32, 4).eval(), SelfAttentionLayer(32, 4).eval()
    tgt, memory = torch.randn(2, 6, 32), torch.randn(2, 20, 32)
    mask = torch.rand(2 * 4, 6, 20) < 0.3
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = self_attn(cross(tgt, memory, mask, torch.randn(2, 20, 32), torch.randn(2, 6, 32)), tgt)
    assert torch.isfinite(out).all()
    counts = {e.key: e.count for e in prof.key_averages()}
    assert counts.get("aten::scaled_dot_product_attention") == 2  # one per layer


# ------------------------------------------------------------------ inference autocast
def test_inference_autocast_stays_close_and_keeps_deformable_attention_in_float32():
    cfg = tiny_reinvit_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cfg.TEST.AMP.ENABLED = True
    torch.manual_seed(0)
    amp_model = build_model(cfg).eval()
    amp_model.load_state_dict(model.state_dict())
    assert amp_model.inference_dtype is torch.bfloat16
    deform_dtypes = []
    for module in amp_model.modules():
        if isinstance(module, MSDeformAttn):
            module.register_forward_hook(lambda m, args, out: deform_dtypes.append((args[0].dtype, out.dtype)))
    inputs = [{k: v for k, v in x.items() if k != "sem_seg"} for x in batch()]
    with torch.no_grad():
        fp32 = model(inputs)[0]["sem_seg"]
        bf16 = amp_model(inputs)[0]["sem_seg"]
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=5e-2)
    assert deform_dtypes and set(deform_dtypes) == {(torch.float32, torch.float32)}


def test_inference_precision_is_checked():
    cfg = tiny_reinvit_cfg()
    cfg.TEST.AMP.ENABLED, cfg.TEST.AMP.PRECISION = True, "float8"
    with pytest.raises(ValueError, match="TEST.AMP.PRECISION='float8'"):
        build_model(cfg)


# ------------------------------------------------------------------ activation checkpointing
def rein_gradients(backbone, x):
    backbone.train()
    calls = []
    # A pre-hook: the recomputation stops (early) right after the last tensor autograd saved, inside Rein.
    handle = backbone.reins.register_forward_pre_hook(lambda *args: calls.append(1))
    out = backbone(x)
    (sum(out[n].square().mean() for n in FEATURES) + out["rein_queries"].square().mean()).backward()
    handle.remove()
    return {n: p.grad.clone() for n, p in backbone.reins.named_parameters()}, len(calls)


@pytest.mark.parametrize("family", ["dinov2_reg4", "eva02", "sam"])
def test_activation_checkpointing_recomputes_rein_and_gives_the_same_gradients(family):
    x = torch.randn(1, 3, 64, 64)
    plain_grads, plain_calls = rein_gradients(tiny_backbone(**FAMILIES[family]), x)
    checkpointed = tiny_backbone(GRAD_CHECKPOINT=True, **FAMILIES[family])
    assert checkpointed.vit.grad_checkpointing
    grads, calls = rein_gradients(checkpointed, x)
    depth = len(checkpointed.vit.blocks)
    assert (plain_calls, calls) == (depth, 2 * depth)  # the backward pass re-applied every block's Rein
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert grads["learnable_tokens_a"][0].abs().sum() > 0  # the first block's Rein, behind a frozen input


def test_reentrant_checkpointing_is_refused():
    set_reentrant_ckpt(True)
    try:
        with pytest.raises(ValueError, match="TIMM_REENTRANT_CKPT"):
            tiny_backbone(GRAD_CHECKPOINT=True)
    finally:
        set_reentrant_ckpt(False)


# ------------------------------------------------------------------ torch.compile
def test_compiled_blocks_give_the_same_features_and_gradients():
    """Inductor needs a C++ compiler on the CPU; without one the test says so instead of passing."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    if shutil.which(compiler) is None:
        pytest.skip(f"torch.compile's inductor backend needs the C++ compiler {compiler!r}, not found on PATH")
    x = torch.randn(1, 3, 64, 64)
    eager, compiled = tiny_backbone().eval(), tiny_backbone(COMPILE="inductor").eval()
    assert_features_close(features(compiled, x), features(eager, x), rtol=1e-4, atol=1e-5)
    eager_grads, _ = rein_gradients(eager, x)
    compiled_grads, _ = rein_gradients(compiled, x)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
