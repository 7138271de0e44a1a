"""VFM weights from local files: official DINOv2 parity, patch 14 -> 16 conversion, refusals."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dinov2.models.vision_transformer import DinoVisionTransformer
from safetensors.torch import save_file

from rein_d2.checkpoint import IncompatibleWeightsError, load_vfm_weights, read_state_dict
from rein_d2.checkpoint.restricted_pickle import UnsafePickleError
from rein_d2.modeling.backbone import ReinViT, create_timm_vfm
from rein_d2.modeling.rein import LoRAReins

REPO = Path(__file__).resolve().parent.parent
WIDTH, DEPTH, HEADS = 32, 4, 2


def official_dinov2(patch_size=14, img_size=56, **kw):
    """The official DINOv2 model code (from the `dinov2` package) with random weights."""
    torch.manual_seed(1)
    model = DinoVisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=WIDTH, depth=DEPTH,
                                  num_heads=HEADS, init_values=1e-5, block_chunks=0, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # zero-initialised tokens and 1e-5 layer scales would hide errors
    return model


def timm_dinov2(patch_size, img_size, name="vit_small_patch14_dinov2"):
    return create_timm_vfm(name, patch_size, img_size, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS).eval()


def test_official_dinov2_checkpoint_reproduces_block_outputs(tmp_path):
    official = official_dinov2()
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official.state_dict(), path)
    vit = timm_dinov2(14, 56)
    missing, unexpected = load_vfm_weights(vit, path)
    assert missing == [] and unexpected == []
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = official.get_intermediate_layers(x, n=list(range(DEPTH)), norm=False)
        ours = vit.forward_intermediates(x, indices=list(range(DEPTH)), norm=False, output_fmt="NCHW",
                                         intermediates_only=True)
    for exp, got in zip(expected, ours):
        assert torch.allclose(got.flatten(2).transpose(1, 2), exp, atol=1e-5)


def test_rein_backbone_equals_official_rein_on_official_dinov2(tmp_path):
    """The official ReinsDinoVisionTransformer loop, restated on the official DINOv2 blocks."""
    official = official_dinov2()
    path = tmp_path / "dinov2.pth"
    torch.save(official.state_dict(), path)
    vit = timm_dinov2(14, 56)
    load_vfm_weights(vit, path)
    torch.manual_seed(2)
    rein = LoRAReins(num_layers=DEPTH, embed_dims=WIDTH, patch_size=14, query_dims=8, token_length=6, lora_dim=4)
    with torch.no_grad():
        rein.scale.fill_(0.5)
    backbone = ReinViT(vit=vit, patch_size=14, out_indices=[0, 1, 2, 3], finetune="rein", peft=rein).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        tokens = official.prepare_tokens_with_masks(x)
        expected = []
        for i, block in enumerate(official.blocks):
            tokens = block(tokens)
            tokens = torch.cat([tokens[:, :1], rein(tokens[:, 1:], i)], dim=1)
            expected.append(tokens[:, 1:].transpose(1, 2).reshape(1, WIDTH, 4, 4))
        features = backbone(x)
    assert torch.allclose(features["res4"], expected[2], atol=1e-5)
    assert torch.allclose(features["res2"], F.interpolate(expected[0], scale_factor=4.0, mode="bilinear"), atol=1e-5)
    assert torch.allclose(features["res5"], F.interpolate(expected[3], scale_factor=0.5, mode="bilinear"), atol=1e-5)


def test_patch14_to_16_conversion_is_a_bicubic_resize(tmp_path):
    official = official_dinov2(img_size=518 // 14 * 14 // 14 * 14)  # 37 x 37 grid as the real release
    state = official.state_dict()
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    vit = timm_dinov2(16, 512)
    load_vfm_weights(vit, path)
    kernel = F.interpolate(state["patch_embed.proj.weight"], size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(vit.patch_embed.proj.weight, kernel)
    grid = state["pos_embed"][:, 1:].reshape(1, 37, 37, WIDTH).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    expected = torch.cat([state["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 1024, WIDTH)], dim=1)
    assert torch.allclose(vit.pos_embed, expected)


def test_dinov2_register_checkpoints_keep_the_official_token_layout(tmp_path):
    """Official DINOv2-reg: [cls + pos0, registers, patches + pos]; timm keeps prefixes off the grid."""
    vit = timm_dinov2(14, 56, name="vit_small_patch14_reg4_dinov2")
    torch.manual_seed(3)
    state = {k: torch.randn_like(v) for k, v in vit.state_dict().items() if k not in ("reg_token", "pos_embed")}
    state.update(mask_token=torch.randn(1, WIDTH), register_tokens=torch.randn(1, 4, WIDTH),
                 pos_embed=torch.randn(1, 1 + 16, WIDTH))
    official = {k: v.clone() for k, v in state.items()}
    save_file(state, str(tmp_path / "reg.safetensors"))
    load_vfm_weights(vit, tmp_path / "reg.safetensors")
    patches = torch.randn(1, 4, 4, WIDTH)
    pos = official["pos_embed"]
    expected = torch.cat([official["cls_token"] + pos[:, :1], official["register_tokens"],
                          patches.reshape(1, 16, WIDTH) + pos[:, 1:]], dim=1)
    with torch.no_grad():
        assert torch.allclose(vit._pos_embed(patches), expected)


def test_missing_file_names_path_and_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MODEL\.VIT\.WEIGHTS.*nowhere\.pth"):
        read_state_dict(tmp_path / "nowhere.pth", "MODEL.VIT.WEIGHTS")


def test_other_architecture_lists_mismatched_shapes(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file(create_timm_vfm("vit_small_patch14_dinov2", 14, 56, embed_dim=48, depth=2, num_heads=2).state_dict(),
              str(path))
    with pytest.raises(IncompatibleWeightsError, match=r"blocks\.0\.attn\.qkv\.weight: file \(144, 48\) vs model \(96, 32\)"):
        load_vfm_weights(timm_dinov2(14, 56), path)


class Payload:
    """Unpickling this would record the fact."""

    loaded = False

    def __reduce__(self):
        return (Payload._record, ())

    @staticmethod
    def _record():
        Payload.loaded = True
        return {}


def test_pickled_objects_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UnsafePickleError, match=r"evil\.pth is refused: reading it would call .*Payload\._record"):
        read_state_dict(path, "MODEL.VIT.WEIGHTS")
    assert not Payload.loaded
    assert pickle.loads(pickle.dumps(Payload())) == {} and Payload.loaded  # the payload does work


def test_wrapped_timm_checkpoints_are_unwrapped(tmp_path):
    vit = timm_dinov2(14, 56)
    torch.save({"state_dict": vit.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    assert set(read_state_dict(tmp_path / "wrapped.pth")) == set(vit.state_dict())


def test_convert_tool_writes_a_loadable_patch16_file(tmp_path):
    official = official_dinov2()
    src = tmp_path / "dinov2.pth"
    torch.save(official.state_dict(), src)
    out = tmp_path / "dinov2_p16.safetensors"
    cmd = [sys.executable, str(REPO / "tools/convert_vfm_weights.py"), str(src), str(out),
           "--timm-name", "vit_small_patch14_dinov2", "--patch-size", "16", "--img-size", "64",
           "--embed-dim", str(WIDTH), "--depth", str(DEPTH), "--num-heads", str(HEADS)]
    subprocess.run(cmd, check=True, capture_output=True)
    vit = timm_dinov2(16, 64)
    assert load_vfm_weights(vit, out) == ([], [])
    assert vit.patch_embed.proj.weight.shape[-1] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dinov2.pth", "dinov2_p16.safetensors"]
