"""Position embeddings off the native grid, as each family's official code resamples them.

References: DINOv2 -> the official model code of the `dinov2` package (block outputs and its own
`interpolate_pos_encoding`); CLIP -> the official Rein `CLIPVisionTransformer.forward` formula
(F.interpolate bilinear to the target size, written out here); EVA02, SAM, MAE -> their official
code has no resampling at run time, so timm's antialiased bicubic resize is expected, written out
here with F.interpolate, and EVA02's rotary table is checked against the official
`VisionRotaryEmbeddingFast` formula (t = arange(n) / n * pt_seq_len) evaluated per axis.
"""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_backbone import FAMILIES
from test_vfm_weights import DEPTH, HEADS, WIDTH, official_dinov2, timm_dinov2
from timm.layers import apply_rot_embed_cat

from rein_d2.checkpoint import load_vfm_weights
from rein_d2.modeling.backbone import ReinViT, create_timm_vfm
from rein_d2.modeling.backbone.pos_embed import official_resampler, resample_dinov2

PATCH, IMG = 16, 128  # stored grid 8 x 8, off DINOv2's patch 14
GRID = IMG // PATCH
# (height, width) inputs off the stored grid: non-square up, mixed up/down, square down, and
# the same token count as 8 x 8 in another shape (the official early-out must not fire).
OFF_GRID = [(128, 192), (160, 96), (96, 96), (64, 256)]
OFF_GRID_IDS = ["8x12", "10x6", "6x6", "4x16"]


def official_and_ours(tmp_path, **official_kw):
    official = official_dinov2(patch_size=PATCH, img_size=IMG, **official_kw)
    path = tmp_path / "dinov2_official.pth"
    torch.save(official.state_dict(), path)
    vit = timm_dinov2(PATCH, IMG)
    assert load_vfm_weights(vit, path) == ([], [])
    return official, vit


def block_outputs(official, vit, x):
    with torch.no_grad():
        expected = official.get_intermediate_layers(x, n=list(range(DEPTH)), norm=False)
        ours = vit.forward_intermediates(x, indices=list(range(DEPTH)), norm=False, output_fmt="NCHW",
                                         intermediates_only=True)
    return expected, [fmap.flatten(2).transpose(1, 2) for fmap in ours]


def timm_default_pos_embed(vit):
    """Drop the official resampling: the model falls back to timm's own `_pos_embed`."""
    del vit._pos_embed
    return vit


def random_tokens(vit, h, w, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in (vit.pos_embed, vit.cls_token):
            p.normal_()
    return torch.randn(1, h, w, vit.embed_dim)


@pytest.mark.parametrize("size", OFF_GRID, ids=OFF_GRID_IDS)
def test_dinov2_off_grid_block_outputs_equal_the_official_model(tmp_path, size):
    official, vit = official_and_ours(tmp_path)
    x = torch.randn(2, 3, *size)
    for exp, got in zip(*block_outputs(official, vit, x)):
        assert got.shape == exp.shape == (2, size[0] * size[1] // PATCH**2, WIDTH)
        assert torch.allclose(got, exp, atol=1e-5), (got - exp).abs().max()


def test_timm_default_resampling_would_fail_the_parity_test(tmp_path):
    """The difference the official formula removes is real: timm's resize is 0.3% off here."""
    official, vit = official_and_ours(tmp_path)
    x = torch.randn(2, 3, 128, 192)
    for exp, got in zip(*block_outputs(official, timm_default_pos_embed(vit), x)):
        assert not torch.allclose(got, exp, atol=1e-3)
        assert (got - exp).norm() / exp.norm() > 1e-3


def test_rein_backbone_off_grid_equals_official_blocks(tmp_path):
    official, vit = official_and_ours(tmp_path)
    backbone = ReinViT(vit=vit, patch_size=PATCH, out_indices=[0, 1, 2, 3], finetune="freeze").eval()
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        expected = official.get_intermediate_layers(x, n=[2], norm=False, reshape=True)[0]
        features = backbone(x)
    assert features["res4"].shape == (1, WIDTH, 8, 12)
    assert torch.allclose(features["res4"], expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", OFF_GRID + [(IMG, IMG)], ids=OFF_GRID_IDS + ["native"])
def test_dinov2_resampler_equals_official_interpolate_pos_encoding(size, dtype):
    """Bit for bit, dtype included: float32 interpolation, cast to the tokens' dtype; the stored
    parameter itself on the native grid."""
    official = official_dinov2(patch_size=PATCH, img_size=IMG)
    h, w = size[0] // PATCH, size[1] // PATCH
    tokens = torch.zeros(1, 1 + h * w, WIDTH, dtype=dtype)
    with torch.no_grad():
        expected = official.interpolate_pos_encoding(tokens, *size)
        ours = resample_dinov2(official.pos_embed, (h, w), (GRID, GRID), 1, dtype)
    assert ours.dtype == expected.dtype and torch.equal(ours, expected)
    assert (ours is official.pos_embed) == (size == (IMG, IMG))


def test_dinov2_reg4_off_grid_follows_the_official_formula(tmp_path):
    """Official DINOv2-reg adds [cls, patches] + interpolated positions, then inserts the registers;
    timm keeps the class position in the class token (folded when loading)."""
    vit = timm_dinov2(PATCH, IMG, name="vit_small_patch14_reg4_dinov2")
    torch.manual_seed(3)
    state = {k: torch.randn_like(v) for k, v in vit.state_dict().items() if k not in ("reg_token", "pos_embed")}
    state.update(mask_token=torch.randn(1, WIDTH), register_tokens=torch.randn(1, 4, WIDTH),
                 pos_embed=torch.randn(1, 1 + GRID * GRID, WIDTH))
    official = {k: v.clone() for k, v in state.items()}
    save_file(state, str(tmp_path / "reg.safetensors"))
    load_vfm_weights(vit, tmp_path / "reg.safetensors")
    patches = torch.randn(1, 8, 12, WIDTH)
    pos = official["pos_embed"]
    grid = pos[:, 1:].reshape(1, 8, 8, WIDTH).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((8 + 0.1) / 8, (12 + 0.1) / 8), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, 96, WIDTH)
    expected = torch.cat([official["cls_token"] + pos[:, :1], official["register_tokens"],
                          patches.reshape(1, 96, WIDTH) + grid], dim=1)
    with torch.no_grad():
        assert torch.allclose(vit._pos_embed(patches), expected, atol=1e-6)


@pytest.mark.parametrize("family", ["dinov2", "dinov2_reg4", "clip"])
def test_native_grid_is_bit_identical_to_timm(family):
    """Sliding-window crops (the native grid) see exactly what timm's own path gives."""
    torch.manual_seed(0)
    vit = create_timm_vfm(FAMILIES[family]["TIMM_NAME"], PATCH, IMG, embed_dim=WIDTH, depth=2, num_heads=HEADS)
    vit.eval()
    assert "_pos_embed" in vit.__dict__
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ours = vit.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        timm_own = timm_default_pos_embed(vit).forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(ours, timm_own))


def clip_vit():
    torch.manual_seed(0)
    return create_timm_vfm(FAMILIES["clip"]["TIMM_NAME"], PATCH, IMG, embed_dim=WIDTH, depth=2,
                           num_heads=HEADS).eval()


@pytest.mark.parametrize("grid", [(8, 12), (10, 6)], ids=["8x12", "10x6"])
def test_clip_off_grid_follows_official_rein_clip(grid):
    vit = clip_vit()
    patches = random_tokens(vit, *grid)
    pos = vit.pos_embed.detach()
    # official: F.interpolate(pos[1:].reshape(1, S, S, C).permute(0, 3, 1, 2), size=(H, W), mode="bilinear")
    spatial = F.interpolate(pos[0, 1:].reshape(1, 8, 8, WIDTH).permute(0, 3, 1, 2), size=grid, mode="bilinear")
    spatial = spatial.reshape(1, WIDTH, grid[0] * grid[1]).permute(0, 2, 1)
    expected = torch.cat([vit.cls_token + pos[:, :1], patches.reshape(1, -1, WIDTH) + spatial], dim=1)
    with torch.no_grad():
        ours = vit._pos_embed(patches)
        timm_own = timm_default_pos_embed(vit)._pos_embed(patches)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(timm_own, expected, atol=1e-2)


def timm_resize(pos_grid_nchw, size):
    """timm's `resample_abs_pos_embed` formula: antialiased bicubic to the target size."""
    return F.interpolate(pos_grid_nchw, size=size, mode="bicubic", align_corners=False, antialias=True)


@pytest.mark.parametrize("family", ["eva02", "mae"])
def test_eva02_and_mae_keep_timm_resampling(family):
    """No runtime resampling in their official code: timm's own `_pos_embed` stays."""
    torch.manual_seed(0)
    vit = create_timm_vfm(FAMILIES[family]["TIMM_NAME"], PATCH, IMG, embed_dim=WIDTH, depth=2,
                          num_heads=HEADS).eval()
    assert official_resampler(vit, FAMILIES[family]["TIMM_NAME"]) is None and "_pos_embed" not in vit.__dict__
    patches = random_tokens(vit, 10, 6)
    grid = timm_resize(vit.pos_embed.detach()[:, 1:].reshape(1, 8, 8, WIDTH).permute(0, 3, 1, 2), (10, 6))
    expected = torch.cat([vit.cls_token, patches.reshape(1, 60, WIDTH)], dim=1)
    expected = expected + torch.cat([vit.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    with torch.no_grad():
        out = vit._pos_embed(patches)
    tokens = out[0] if family == "eva02" else out
    assert torch.allclose(tokens, expected, atol=1e-5)


def official_eva02_rope(q, grid, pt_seq_len, theta=10000.0):
    """Official EVA02 `VisionRotaryEmbeddingFast` (dim = half the head dim), evaluated per axis:
    t = arange(n) / n * pt_seq_len, freqs interleaved (f0, f0, f1, f1, ...), rows' half then
    columns' half, rotate_half on interleaved pairs."""
    half = q.shape[-1] // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2)[: half // 2].float() / half)
    per_axis = [(torch.arange(n) / n * pt_seq_len)[:, None] * freqs for n in grid]
    per_axis = [f.repeat_interleave(2, dim=-1) for f in per_axis]
    angles = torch.cat([per_axis[0][:, None, :].expand(*grid, half), per_axis[1][None, :, :].expand(*grid, half)],
                       dim=-1).reshape(grid[0] * grid[1], -1)
    pairs = q.reshape(*q.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).reshape(q.shape)
    return q * angles.cos() + rotated * angles.sin()


def test_eva02_rotary_embedding_off_grid_is_the_official_formula_per_axis():
    torch.manual_seed(0)
    vit = create_timm_vfm(FAMILIES["eva02"]["TIMM_NAME"], PATCH, IMG, embed_dim=WIDTH, depth=2,
                          num_heads=HEADS).eval()
    grid = (8, 12)
    with torch.no_grad():
        _, rope = vit._pos_embed(torch.randn(1, *grid, WIDTH))
    q = torch.randn(1, HEADS, grid[0] * grid[1], WIDTH // HEADS)
    # timm's eva02_large_patch14_224 keeps the pre-training grid 224 / 14 = 16 as the official pt_hw_seq_len
    assert torch.allclose(apply_rot_embed_cat(q, rope), official_eva02_rope(q, grid, pt_seq_len=16), atol=1e-5)


def test_sam_keeps_timm_nhwc_resampling():
    """SAM's own encoder adds its NHWC grid as is (no official resampling): timm's serves."""
    torch.manual_seed(0)
    name = FAMILIES["sam"]["TIMM_NAME"]
    vit = create_timm_vfm(name, PATCH, IMG, dynamic_img_size=False, embed_dim=WIDTH, depth=2,
                          num_heads=HEADS).eval()
    assert official_resampler(vit, name) is None and "_pos_embed" not in vit.__dict__
    with torch.no_grad():
        vit.pos_embed.normal_()
    seen = {}
    vit.patch_embed.register_forward_hook(lambda m, a, out: seen.setdefault("patches", out))
    vit.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("block0", a[0]))
    with torch.no_grad():
        vit.forward_intermediates(torch.randn(1, 3, 128, 192), indices=[0], intermediates_only=True)
    grid = timm_resize(vit.pos_embed.detach().permute(0, 3, 1, 2), (8, 12)).permute(0, 2, 3, 1)
    assert torch.allclose(seen["block0"] - seen["patches"], grid, atol=1e-5)
