"""The VFMs that came after the paper (DINOv3, Perception Encoder spatial, RADIOv3): built by
timm, refined by Rein on patch tokens only, and DINOv3 read from Meta's own checkpoint layout."""
from pathlib import Path

import pytest
import timm
import torch
from detectron2.modeling import build_model

from rein_d2.checkpoint.vfm_weights import IncompatibleWeightsError, load_vfm_weights
from test_configs import load, shrink

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "vfms"
NEW_VFMS = {  # config -> prefix tokens (class and register tokens) that Rein leaves as they are
    "rein_dinov3_large_gta_512.yaml": 5,
    "rein_pe_spatial_large_gta_512.yaml": 1,
    "rein_radio_v3_large_gta_512.yaml": 8,
}
C, HEADS, DEPTH = 32, 2, 2


def official_dinov3_state(qkv_bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Meta's DINOv3 ViT-S/16 names (dinov3/models/vision_transformer.py, layers/*.py:
    SelfAttentionBlock with LinearKMaskedBias qkv, LayerScale, Mlp; 4 storage tokens; rope periods
    buffer), at tiny width, random values."""
    shapes = {"cls_token": (1, 1, C), "storage_tokens": (1, 4, C), "mask_token": (1, C),
              "patch_embed.proj.weight": (C, 3, 16, 16), "patch_embed.proj.bias": (C,),
              "rope_embed.periods": (C // HEADS // 4,), "norm.weight": (C,), "norm.bias": (C,)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (C,), b + "norm1.bias": (C,), b + "attn.qkv.weight": (3 * C, C),
                   b + "attn.qkv.bias": (3 * C,), b + "attn.qkv.bias_mask": (3 * C,),
                   b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,), b + "ls1.gamma": (C,),
                   b + "norm2.weight": (C,), b + "norm2.bias": (C,), b + "mlp.fc1.weight": (4 * C, C),
                   b + "mlp.fc1.bias": (4 * C,), b + "mlp.fc2.weight": (C, 4 * C), b + "mlp.fc2.bias": (C,),
                   b + "ls2.gamma": (C,)}
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    if qkv_bias is not None:
        for i in range(DEPTH):
            state[f"blocks.{i}.attn.qkv.bias"] = qkv_bias.clone()
    return state


def tiny_dinov3(name: str) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, embed_dim=C, num_heads=HEADS, depth=DEPTH, img_size=64,
                             num_classes=0)


def test_meta_dinov3_layout_loads_into_timm_with_nothing_missing_or_unexpected(tmp_path):
    state = official_dinov3_state()
    torch.save(state, tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    model = tiny_dinov3("vit_small_patch16_dinov3_qkvb")
    missing, unexpected = load_vfm_weights(model, tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    assert missing == [] and unexpected == []
    block = model.blocks[1]
    assert torch.equal(model.reg_token, state["storage_tokens"])
    assert torch.equal(block.attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    q, _, v = state["blocks.1.attn.qkv.bias"].chunk(3)
    assert torch.equal(block.attn.q_bias, q) and torch.equal(block.attn.v_bias, v)
    assert torch.equal(block.gamma_2, state["blocks.1.ls2.gamma"])


def test_biases_are_never_dropped_silently(tmp_path):
    path = tmp_path / "dinov3.pth"
    torch.save(official_dinov3_state(), path)
    with pytest.raises(IncompatibleWeightsError, match=r"non-zero query/value biases.*_dinov3_qkvb"):
        load_vfm_weights(tiny_dinov3("vit_small_patch16_dinov3"), path)
    # the distilled releases' biases are zero but for the masked key part: the variant without biases fits
    key_only = torch.cat([torch.zeros(C), torch.randn(C), torch.zeros(C)])
    torch.save(official_dinov3_state(key_only), path)
    assert load_vfm_weights(tiny_dinov3("vit_small_patch16_dinov3"), path) == ([], [])


@pytest.mark.parametrize("config", sorted(NEW_VFMS))
def test_each_new_vfm_trains_a_step_with_only_rein_and_the_head_trainable(config):
    cfg = shrink(load(CONFIG_DIR / config))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.backbone.num_prefix_tokens == NEW_VFMS[config]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("backbone.reins.", "sem_seg_head.")) for n in trainable)
    batch = [{"image": torch.rand(3, 64, 64) * 255, "sem_seg": torch.randint(0, 19, (64, 64)),
              "height": 64, "width": 64}]
    loss = sum(model(batch).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.reins.learnable_tokens_a.grad.abs().sum() > 0


@pytest.mark.parametrize("config", sorted(NEW_VFMS))
def test_at_full_size_rein_has_the_trainable_count_the_readme_gives(config):
    """2,990,081 (worked out in test_rein.py) for 24 refined layers of width 1024."""
    from rein_d2.modeling.backbone.peft import build_peft

    cfg = load(CONFIG_DIR / config)
    with torch.device("meta"):
        vit = timm.create_model(cfg.MODEL.VIT.TIMM_NAME, pretrained=False, num_classes=0)
        rein = build_peft(cfg, max(cfg.MODEL.VIT.OUT_INDICES) + 1, vit.embed_dim, cfg.MODEL.VIT.PATCH_SIZE)
    assert (vit.embed_dim, len(vit.blocks)) == (1024, 24)
    assert sum(p.numel() for p in rein.parameters() if p.requires_grad) == 2_990_081
