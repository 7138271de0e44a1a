"""The head's fast paths against the official computation restated on the same weights
(rein_d2.benchmark.official_head: grid_sample per level, position codes from cumulative sums,
unfused attention), outputs and gradients; the size caches across input sizes."""
import pytest
import torch
from detectron2.modeling import build_model
from test_mask2former_reinvit import tiny_reinvit_cfg

from rein_d2.benchmark.official_head import (official_pixel_decoder, official_position_code, official_semantic_scores,
                                             official_transformer_decoder)
from rein_d2.modeling.meta_arch.mask_former_model import upsampled_semantic_inference
from rein_d2.modeling.pixel_decoder.ms_deform_attn import compiled_taps, weighted_rows
from rein_d2.modeling.pixel_decoder.msdeformattn import encoder_sampling_reference
from rein_d2.modeling.rein import REIN_QUERIES_KEY
from rein_d2.modeling.transformer_decoder.position_encoding import PositionEmbeddingSine, sine_position_code

SIZES = [(64, 64), (96, 128)]


def tiny_model(seed=0, dtype=torch.float32):
    """A tiny Rein Mask2Former with learned (non-zero) offset and attention weights, which the
    official initialisation leaves at zero."""
    torch.manual_seed(seed)
    cfg = tiny_reinvit_cfg()
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 2
    model = build_model(cfg).eval().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.sem_seg_head.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def backbone_features(model, size, seed=0):
    dtype = model.pixel_mean.dtype
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed), dtype=dtype))
    return {k: v.requires_grad_() if k != REIN_QUERIES_KEY else v for k, v in features.items()}


def outputs_and_gradients(fn, features, module):
    """fn(features) -> tensors; their weighted sum's gradients w.r.t. the module's parameters and the features."""
    module.zero_grad()
    for v in features.values():
        v.grad = None
    outs = fn(features)
    g = torch.Generator().manual_seed(7)
    sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    grads.update({k: v.grad.clone() for k, v in features.items() if v.grad is not None})
    return [o.detach() for o in outs], grads


def assert_all_close(actual, expected, **tol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tol)


def flat_pixel_decoder_outputs(out):
    mask_features, coarsest, scales = out
    return [mask_features, coarsest, *scales]


# In float64, where the two formulations of a sampling location (rein-d2's in pixels, the official
# one normalised) cannot land on the two sides of a pixel boundary, so gradients compare tightly.
TIGHT = {"rtol": 1e-7, "atol": 1e-9}


@pytest.mark.parametrize("size", SIZES)
def test_pixel_decoder_equals_the_official_computation_outputs_and_gradients(size):
    model = tiny_model(dtype=torch.float64)
    decoder = model.sem_seg_head.pixel_decoder
    features = backbone_features(model, size)
    fast, fast_grads = outputs_and_gradients(
        lambda f: flat_pixel_decoder_outputs(decoder.forward_features(f)), features, decoder)
    official, official_grads = outputs_and_gradients(
        lambda f: flat_pixel_decoder_outputs(official_pixel_decoder(decoder, f)), features, decoder)
    assert fast[0].dtype == torch.float64
    assert_all_close(fast, official, **TIGHT)
    assert fast_grads.keys() == official_grads.keys()
    assert any("sampling_offsets.weight" in name for name in fast_grads)
    for name, grad in official_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, **TIGHT, msg=lambda m, name=name: f"{name}: {m}")


def test_transformer_decoder_equals_the_official_computation_outputs_and_gradients():
    model = tiny_model(dtype=torch.float64)
    head = model.sem_seg_head
    features = backbone_features(model, SIZES[1])
    with torch.no_grad():
        mask_features, _, scales = head.pixel_decoder.forward_features(features)
    inputs = {"mask_features": mask_features, **{f"scale{i}": s for i, s in enumerate(scales)}}
    inputs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    queries = features[REIN_QUERIES_KEY]

    def run(decode):
        return lambda f: decode([f["scale0"], f["scale1"], f["scale2"]], f["mask_features"])

    fast, fast_grads = outputs_and_gradients(run(lambda x, m: list(head.predictor(x, m, queries).values())[:2]),
                                             inputs, head.predictor)
    official, official_grads = outputs_and_gradients(
        run(lambda x, m: list(official_transformer_decoder(head.predictor, x, m, queries))), inputs, head.predictor)
    assert_all_close(fast, official, **TIGHT)
    for name, grad in official_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, **TIGHT, msg=lambda m, name=name: f"{name}: {m}")


def test_whole_crop_scores_equal_the_official_computation():
    """Class scores within 1e-4 of the official computation (the issue's bound), in float32."""
    model = tiny_model()
    crops = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = upsampled_semantic_inference(*model.crop_outputs(crops), (64, 96))
        features = model.backbone(crops)
        head = model.sem_seg_head
        mask_features, _, scales = official_pixel_decoder(head.pixel_decoder, features)
        logits = official_transformer_decoder(head.predictor, scales, mask_features, features[REIN_QUERIES_KEY])
        official = official_semantic_scores(*logits, (64, 96))
    assert (fast - official).abs().max() <= 1e-4


def test_caches_serve_each_input_size_its_own_entry():
    """Sizes A, B, A in a row: every call equals the uncached official computation of its size."""
    model = tiny_model()
    decoder = model.sem_seg_head.pixel_decoder
    for size in (SIZES[0], SIZES[1], SIZES[0]):
        features = backbone_features(model, size)
        with torch.no_grad():
            assert_all_close(flat_pixel_decoder_outputs(decoder.forward_features(features)),
                             flat_pixel_decoder_outputs(official_pixel_decoder(decoder, features)),
                             rtol=1e-4, atol=2e-5)
    cpu = torch.device("cpu")
    small = encoder_sampling_reference(((2, 2), (4, 4)), 4, 4, cpu, torch.float32)
    assert encoder_sampling_reference(((2, 2), (4, 4)), 4, 4, cpu, torch.float32) is small
    assert encoder_sampling_reference(((3, 2), (6, 4)), 4, 4, cpu, torch.float32).xy.shape[1] == 6 + 24


def test_position_code_equals_the_official_one_for_every_size_and_the_cache_is_bounded():
    pe = PositionEmbeddingSine(8, normalize=True)
    for h, w in [(3, 5), (7, 2), (3, 5)]:
        x = torch.zeros(2, 1, h, w)
        torch.testing.assert_close(pe(x), official_position_code(x, pe))
    for side in range(1, 40):
        pe(torch.zeros(1, 1, side, 2))
    info = sine_position_code.cache_info()
    assert info.currsize <= info.maxsize < 40


def test_a_code_made_in_inference_mode_does_not_reach_autograd():
    """Tensors made under torch.inference_mode cannot be saved for backward: the cache keys them apart."""
    model = tiny_model()
    decoder = model.sem_seg_head.pixel_decoder
    size = (64, 160)  # a size no other test uses, so that inference mode makes the entries first
    with torch.inference_mode():
        decoder.forward_features(backbone_features(model, size))
    features = backbone_features(model, size)
    mask_features, _, _ = decoder.forward_features(features)
    mask_features.sum().backward()
    assert features["res5"].grad is not None


def test_traced_gather_equals_embedding_bag():
    """The ONNX formulation (a gather and a batched product) sums the same rows as embedding_bag."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(30, 5, generator=g)
    rows = torch.randint(0, 30, (7, 12), generator=g, dtype=torch.int32)
    taps = torch.rand(7, 12, generator=g)
    traced = torch.jit.trace(weighted_rows, (table, rows, taps), check_trace=False)
    assert "embedding_bag" not in str(traced.graph)
    torch.testing.assert_close(traced(table, rows, taps), weighted_rows(table, rows, taps))
    torch.testing.assert_close(weighted_rows(table, rows, taps), (table[rows.long()] * taps[..., None]).sum(1))


def test_compiled_sampling_equals_the_eager_one_outputs_and_gradients():
    """MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE inductor: used once it matched, same outputs and gradients.
    Inductor needs a C++ compiler on the CPU; without one the test says so instead of passing."""
    import shutil

    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    if shutil.which(compiler) is None:
        pytest.skip(f"torch.compile's inductor backend needs the C++ compiler {compiler!r}, not found on PATH")
    eager = tiny_model()
    cfg = tiny_reinvit_cfg()
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 2
    cfg.MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE = "inductor"
    compiled = build_model(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    fused = compiled_taps("inductor")
    for size in SIZES:
        features = backbone_features(eager, size)
        for _ in range(2):  # the first call of a size checks the compiled function, the second uses it
            outs = [outputs_and_gradients(lambda f, m=m: flat_pixel_decoder_outputs(
                m.sem_seg_head.pixel_decoder.forward_features(f)), features, m.sem_seg_head.pixel_decoder)
                for m in (eager, compiled)]
            assert_all_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
            for name, grad in outs[0][1].items():
                torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-4, atol=1e-6,
                                           msg=lambda m, name=name: f"{name}: {m}")
    assert len(fused.verdicts) >= len(SIZES) and all(fused.verdicts.values())
