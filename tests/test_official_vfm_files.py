"""Each backbone family reads the weight file its official config uses (EVA02's checkpoint,
OpenAI's CLIP TorchScript archive, SAM's whole-model .pth, MAE's release), with nothing missing
or unexpected, and a file of another family is refused with the tensors that differ.

The files are written the way the real ones were: `torch.save` of the official key layout
(key lists from the official code: EVA-02's modeling_pretrain.py, MAE's models_mae.py encoder),
SAM's own `segment_anything` model, and `torch.jit.trace` + `torch.jit.save` of a module with
OpenAI's CLIP structure (clip/model.py, restated below). References: the official modules'
outputs (SAM, CLIP) or tensors worked out by hand from the official converters.
"""
import io
import pickle
import re
import subprocess
import sys
import zipfile
from collections import OrderedDict
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from payloads import Shell
from safetensors.torch import load_file
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn

from rein_d2.checkpoint.restricted_pickle import UnsafePickleError
from rein_d2.checkpoint.vfm_weights import (
    IncompatibleWeightsError,
    load_vfm_weights,
    read_state_dict,
)
from rein_d2.modeling.backbone import create_timm_vfm

REPO = Path(__file__).resolve().parent.parent
C, HEADS, DEPTH = 32, 2, 2
CLIP_NAME, EVA_NAME, SAM_NAME, MAE_NAME = ("vit_large_patch14_clip_quickgelu_224", "eva02_large_patch14_224",
                                           "samvit_huge_patch16", "vit_large_patch16_224")
SAM_TINY = {"global_attn_indexes": [1], "window_size": 2, "neck_chans": 16}  # the official tiny SAM below


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def tiny(name: str, patch: int, img: int, **kw) -> nn.Module:
    return create_timm_vfm(name, patch, img, embed_dim=C, depth=DEPTH, num_heads=HEADS, **kw).eval()


# ---- EVA02 -----------------------------------------------------------------------------------------

def official_eva02_state(grid: int = 16) -> dict[str, torch.Tensor]:
    """EVA-02-L's MIM pre-training model (asuka/modeling_pretrain.py, Block of modeling_finetune.py
    with subln: q/k/v projections, q/v biases, SwiGLU w1/w2/ffn_ln/w3; the rotary tables are buffers of
    the model and of each block's attention; `lm_head` predicts the teacher's features), tiny width."""
    hidden, rope = int(C * 4 * 2 / 3), (grid * grid, C // HEADS)
    shapes = {"cls_token": (1, 1, C), "mask_token": (1, 1, C), "pos_embed": (1, 1 + grid * grid, C),
              "patch_embed.proj.weight": (C, 3, 14, 14), "patch_embed.proj.bias": (C,),
              "rope.freqs_cos": rope, "rope.freqs_sin": rope, "norm.weight": (C,), "norm.bias": (C,),
              "lm_head.weight": (24, C), "lm_head.bias": (24,)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (C,), b + "norm1.bias": (C,), b + "attn.q_bias": (C,), b + "attn.v_bias": (C,),
                   b + "attn.q_proj.weight": (C, C), b + "attn.k_proj.weight": (C, C), b + "attn.v_proj.weight": (C, C),
                   b + "attn.rope.freqs_cos": rope, b + "attn.rope.freqs_sin": rope, b + "attn.proj.weight": (C, C),
                   b + "attn.proj.bias": (C,), b + "norm2.weight": (C,), b + "norm2.bias": (C,),
                   b + "mlp.w1.weight": (hidden, C), b + "mlp.w1.bias": (hidden,), b + "mlp.w2.weight": (hidden, C),
                   b + "mlp.w2.bias": (hidden,), b + "mlp.ffn_ln.weight": (hidden,), b + "mlp.ffn_ln.bias": (hidden,),
                   b + "mlp.w3.weight": (C, hidden), b + "mlp.w3.bias": (C,)}
    return random_state(shapes, seed=1)


@pytest.fixture()
def eva02_file(tmp_path):
    state = official_eva02_state()
    path = tmp_path / "eva02_L_pt_m38m_p14.pt"
    torch.save({"model": state}, path)  # EVA-02 reads it as checkpoint["model"]
    return path, state


def test_official_eva02_checkpoint_loads_with_its_tensors_renamed(eva02_file):
    path, state = eva02_file
    model = tiny(EVA_NAME, 14, 224)
    assert load_vfm_weights(model, path) == ([], [])
    block, b = model.blocks[1], "blocks.1."
    assert torch.equal(block.attn.q_proj.bias, state[b + "attn.q_bias"])
    assert torch.equal(block.attn.v_proj.bias, state[b + "attn.v_bias"])
    assert block.attn.k_proj.bias is None  # EVA02's key projection has no bias either
    assert torch.equal(block.attn.k_proj.weight, state[b + "attn.k_proj.weight"])
    assert torch.equal(block.mlp.fc1_g.weight, state[b + "mlp.w1.weight"])  # SiLU(w1 x) * w2 x
    assert torch.equal(block.mlp.fc1_x.weight, state[b + "mlp.w2.weight"])
    assert torch.equal(block.mlp.norm.weight, state[b + "mlp.ffn_ln.weight"])
    assert torch.equal(block.mlp.fc2.bias, state[b + "mlp.w3.bias"])
    assert torch.equal(model.fc_norm.weight, state["norm.weight"])
    assert torch.equal(model.pos_embed, state["pos_embed"])


def test_eva02_patch16_512_is_what_the_official_rein_converter_makes(eva02_file):
    """convert_eva2_512x512.py: kernel 14 -> 16 and the 16x16 grid -> 32x32, bicubic, class position kept."""
    path, state = eva02_file
    model = tiny(EVA_NAME, 16, 512)
    assert load_vfm_weights(model, path) == ([], [])
    kernel = F.interpolate(state["patch_embed.proj.weight"], size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(model.patch_embed.proj.weight, kernel)
    grid = state["pos_embed"][:, 1:].reshape(1, 16, 16, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(model.pos_embed, torch.cat([state["pos_embed"][:, :1], grid.reshape(1, 1024, C)], dim=1))


# ---- OpenAI CLIP -----------------------------------------------------------------------------------

class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, attn_mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class VisualTransformer(nn.Module):
    """OpenAI CLIP's VisionTransformer (clip/model.py): its names, and its forward up to the blocks."""

    def __init__(self, resolution, patch, width, layers, heads, output_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding).permute(1, 0, 2)
        outputs = []
        for block in self.transformer.resblocks:
            x = block(x)
            outputs.append(x.permute(1, 0, 2))
        return self.ln_post(x[0]) @ self.proj, outputs


class OpenAICLIP(nn.Module):
    """OpenAI's CLIP module tree (image tower, text tower, projections, logit scale), tiny."""

    def __init__(self, resolution=28, patch=14):
        super().__init__()
        self.visual = VisualTransformer(resolution, patch, C, DEPTH, HEADS, output_dim=16)
        mask = torch.full((5, 5), float("-inf")).triu_(1)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(ResidualAttentionBlock(16, 2, mask))
        self.token_embedding = nn.Embedding(10, 16)
        self.positional_embedding = nn.Parameter(torch.randn(5, 16))
        self.ln_final = LayerNorm(16)
        self.text_projection = nn.Parameter(torch.randn(16, 16))
        self.logit_scale = nn.Parameter(torch.ones([]) * 2.6593)

    def forward(self, image, text):
        image_features = self.visual(image)[0]
        x = self.transformer.resblocks((self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2))
        text_features = self.ln_final(x.permute(1, 0, 2))[torch.arange(text.shape[0]), text.argmax(-1)]
        return self.logit_scale.exp() * image_features @ (text_features @ self.text_projection).t()


def to_half_as_openai(model: nn.Module) -> None:
    """clip/model.py convert_weights: conv / linear / attention weights and the projections in fp16."""
    for module in model.modules():
        names = ["weight", "bias"] if isinstance(module, (nn.Conv2d, nn.Linear)) else []
        names += ["in_proj_weight", "in_proj_bias"] if isinstance(module, nn.MultiheadAttention) else []
        names += [n for n in ("text_projection", "proj") if isinstance(getattr(module, n, None), nn.Parameter)]
        for name in names:
            tensor = getattr(module, name)
            if tensor is not None:
                tensor.data = tensor.data.half()


@pytest.fixture()
def clip_file(tmp_path):
    """(ViT-L-14.pt made by torch.jit.trace + torch.jit.save, the model's state dict as saved)."""
    torch.manual_seed(0)
    model = OpenAICLIP().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    traced = torch.jit.trace(model, (torch.randn(1, 3, 28, 28), torch.tensor([[1, 2, 9, 0, 0]])))
    to_half_as_openai(model)  # the traced module holds the same parameters
    path = tmp_path / "ViT-L-14.pt"
    torch.jit.save(traced, str(path))
    state = {k: v.clone() for k, v in traced.state_dict().items()}
    assert state["visual.conv1.weight"].dtype == torch.float16 and state["visual.ln_pre.weight"].dtype == torch.float32
    return path, state


def test_torchscript_archive_gives_the_module_tensors_without_its_code(clip_file):
    path, state = clip_file
    ours = read_state_dict(path)
    assert set(ours) == set(state)
    assert all(ours[k].dtype == v.dtype and torch.equal(ours[k], v) for k, v in state.items())


def test_openai_clip_release_reproduces_the_official_blocks(clip_file):
    path, state = clip_file
    model = tiny(CLIP_NAME, 14, 28)
    assert load_vfm_weights(model, path) == ([], [])
    reference = VisualTransformer(28, 14, C, DEPTH, HEADS, 16).eval()
    reference.load_state_dict({k[len("visual."):]: v.float() for k, v in state.items() if k.startswith("visual.")})
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        _, expected = reference(x)
        ours = model.forward_intermediates(x, indices=list(range(DEPTH)), norm=False, intermediates_only=True)
    for exp, got in zip(expected, ours):
        assert torch.allclose(got.flatten(2).transpose(1, 2), exp[:, 1:], atol=1e-5)
    qkv = state["visual.transformer.resblocks.1.attn.in_proj_weight"].float()
    assert torch.equal(model.blocks[1].attn.qkv.weight, qkv)


def test_openai_clip_patch16_is_what_the_official_rein_clip_backbone_loads(clip_file):
    """rein/models/backbones/clip.py: kernel bicubic to 16, position grid bilinear, class position kept."""
    path, state = clip_file
    model = tiny(CLIP_NAME, 16, 64)
    assert load_vfm_weights(model, path) == ([], [])
    kernel = F.interpolate(state["visual.conv1.weight"].float(), size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(model.patch_embed.proj.weight, kernel)
    pos = state["visual.positional_embedding"]
    grid = F.interpolate(pos[1:].reshape(1, 2, 2, C).permute(0, 3, 1, 2), size=(4, 4), mode="bilinear")
    expected = torch.cat([pos[:1], grid.reshape(C, 16).permute(1, 0)], dim=0)
    assert torch.allclose(model.pos_embed[0], expected)


class ScriptedWithTypedAttributes(nn.Module):
    """Scripted modules pickle typed list and dict attributes through torch.jit._pickle's rebuilders."""

    sizes: list[int]

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.register_buffer("scale", torch.rand(4))
        self.sizes, self.rates = [14, 16], {"drop": 0.1}

    def forward(self, x):
        return self.proj(x) * self.scale * self.sizes[0] * self.rates["drop"]


def test_scripted_archives_with_typed_attributes_give_their_tensors(tmp_path):
    module = ScriptedWithTypedAttributes()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "scripted.pt"))
    with zipfile.ZipFile(tmp_path / "scripted.pt") as archive:  # what the reader has to take
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert b"build_intlist" in data and b"restore_type_tag" in data
    ours = read_state_dict(tmp_path / "scripted.pt")
    assert set(ours) == set(module.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in module.state_dict().items())


def rewrite_pickle(archive: Path, out: Path, payload: bytes) -> None:
    """The archive with its `data.pkl` replaced, every other record (code, constants, storages) as it was."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, payload if info.filename.endswith("/data.pkl") else src.read(info))


def test_a_torchscript_archive_whose_pickle_would_run_code_is_refused(clip_file, tmp_path):
    path, _ = clip_file
    marker = tmp_path / "ran"
    evil = tmp_path / "evil_ViT-L-14.pt"
    rewrite_pickle(path, evil, pickle.dumps({"visual": Shell(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"evil_ViT-L-14\.pt is refused: reading it would call (os|posix)\.system"):
        read_state_dict(evil)
    assert not marker.exists()
    with zipfile.ZipFile(evil) as archive:  # the payload is live: the standard unpickler runs it
        pickle.load(io.BytesIO(archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))))
    assert marker.exists()


# ---- SAM -------------------------------------------------------------------------------------------

def official_tiny_sam() -> Sam:
    """segment_anything's Sam as build_sam.py assembles it, tiny; random values everywhere."""
    torch.manual_seed(0)
    sam = Sam(image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=C, depth=DEPTH, num_heads=HEADS,
                                            mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True,
                                            use_rel_pos=True, global_attn_indexes=[1], window_size=2, out_chans=16),
              prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                           mask_in_chans=4),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
                  depth=1, embedding_dim=16, mlp_dim=32, num_heads=2), transformer_dim=16, iou_head_depth=2,
                  iou_head_hidden_dim=16)).eval()
    with torch.no_grad():
        for p in sam.parameters():
            p.normal_(0, 0.2)
    return sam


@pytest.fixture()
def sam_file(tmp_path):
    sam = official_tiny_sam()
    path = tmp_path / "sam_vit_h_4b8939.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


def test_official_sam_file_gives_the_official_image_encoder_outputs(sam_file):
    path, sam = sam_file
    assert any(k.startswith("mask_decoder.") for k in torch.load(path, weights_only=True))
    model = tiny(SAM_NAME, 16, 64, dynamic_img_size=False, **SAM_TINY)
    assert load_vfm_weights(model, path) == ([], [])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), sam.image_encoder(x), atol=1e-5)


# ---- MAE -------------------------------------------------------------------------------------------

def official_mae_state(grid: int = 14) -> dict[str, torch.Tensor]:
    """MAE's released encoder (models_mae.py MaskedAutoencoderViT without its decoder: timm's Block
    names), as `mae_pretrain_vit_large.pth` holds it under "model", tiny width."""
    shapes = {"cls_token": (1, 1, C), "pos_embed": (1, 1 + grid * grid, C), "patch_embed.proj.weight": (C, 3, 16, 16),
              "patch_embed.proj.bias": (C,), "norm.weight": (C,), "norm.bias": (C,)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (C,), b + "norm1.bias": (C,), b + "attn.qkv.weight": (3 * C, C),
                   b + "attn.qkv.bias": (3 * C,), b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
                   b + "norm2.weight": (C,), b + "norm2.bias": (C,), b + "mlp.fc1.weight": (4 * C, C),
                   b + "mlp.fc1.bias": (4 * C,), b + "mlp.fc2.weight": (C, 4 * C), b + "mlp.fc2.bias": (C,)}
    return random_state(shapes, seed=2)


def test_official_mae_release_loads_and_its_grid_is_resized_for_512(tmp_path):
    state = official_mae_state()
    path = tmp_path / "mae_pretrain_vit_large.pth"
    torch.save({"model": state}, path)
    native = tiny(MAE_NAME, 16, 224)
    assert load_vfm_weights(native, path) == ([], [])
    assert all(torch.equal(native.state_dict()[k], v) for k, v in state.items())
    model = tiny(MAE_NAME, 16, 512)
    assert load_vfm_weights(model, path) == ([], [])
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(model.pos_embed, torch.cat([state["pos_embed"][:, :1], grid.reshape(1, 1024, C)], dim=1))


# ---- wrong families and the converter --------------------------------------------------------------

@pytest.mark.parametrize("file, model, names", [
    ("sam", CLIP_NAME, [r"Segment Anything", r"not vit_large_patch14_clip_quickgelu_224's", r"cls_token",
                        r"blocks\.\*\.attn\.rel_pos_h x2", r"neck\.\*\.weight x4"]),
    ("clip", SAM_NAME, [r"OpenAI CLIP", r"not samvit_huge_patch16's", r"blocks\.\*\.attn\.rel_pos_h x2",
                        r"norm_pre\.weight"]),
    ("eva02", MAE_NAME, [r"official EVA02", r"blocks\.\*\.attn\.qkv\.weight x2", r"blocks\.\*\.mlp\.fc1_g\.weight x2"]),
])
def test_a_file_of_another_family_is_refused_with_the_tensors_that_differ(file, model, names, sam_file, clip_file,
                                                                          eva02_file):
    path = {"sam": sam_file, "clip": clip_file, "eva02": eva02_file}[file][0]
    vit = tiny(model, 16, 64, dynamic_img_size=False, **SAM_TINY) if model == SAM_NAME else tiny(model, 16, 64)
    with pytest.raises(IncompatibleWeightsError) as refused:
        load_vfm_weights(vit, path, "MODEL.VIT.WEIGHTS")
    for name in [re.escape(f"MODEL.VIT.WEIGHTS: {path}"), *names]:
        assert re.search(name, str(refused.value)), str(refused.value)


def convert(source: Path, out: Path, timm_name: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools/convert_vfm_weights.py"), str(source), str(out), "--timm-name", timm_name,
           "--patch-size", "16", "--img-size", "64", "--embed-dim", str(C), "--depth", str(DEPTH),
           "--num-heads", str(HEADS)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def test_converter_writes_openai_clip_as_timm_safetensors_and_refuses_other_families(clip_file, sam_file, tmp_path):
    path, _ = clip_file
    out = tmp_path / "clip_vitl16_512.safetensors"
    result = convert(path, out, CLIP_NAME)
    assert result.returncode == 0, result.stderr[-3000:]
    direct = tiny(CLIP_NAME, 16, 64)
    load_vfm_weights(direct, path)
    converted = tiny(CLIP_NAME, 16, 64)
    assert load_vfm_weights(converted, out) == ([], [])
    assert set(load_file(str(out))) == set(direct.state_dict())
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in direct.state_dict().items())
    refused = convert(sam_file[0], tmp_path / "sam_as_clip.safetensors", CLIP_NAME)
    assert refused.returncode != 0
    assert re.search(r"Segment Anything .*blocks\.\*\.attn\.rel_pos_h", refused.stderr), refused.stderr[-3000:]
    assert not (tmp_path / "sam_as_clip.safetensors").exists()
