"""The timm-based Rein backbone: every VFM family, fine-tune modes, features and gradients."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from rein_d2 import add_rein_config
from rein_d2.modeling.rein import REIN_QUERIES_KEY

FAMILIES = {
    "dinov2": dict(TIMM_NAME="vit_large_patch14_dinov2"),
    "dinov2_reg4": dict(TIMM_NAME="vit_large_patch14_reg4_dinov2"),
    "eva02": dict(TIMM_NAME="eva02_large_patch14_224"),
    "clip": dict(TIMM_NAME="vit_large_patch14_clip_224"),
    "sam": dict(TIMM_NAME="samvit_huge_patch16", DYNAMIC_IMG_SIZE=False),
    "mae": dict(TIMM_NAME="vit_large_patch16_224"),
}


def tiny_cfg(finetune="rein", **vit):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "ReinViT"
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 8
    cfg.MODEL.REIN.TOKEN_LENGTH = 6
    cfg.MODEL.REIN.LORA_DIM = 4
    v = cfg.MODEL.VIT
    v.EMBED_DIM, v.DEPTH, v.NUM_HEADS, v.IMG_SIZE, v.PATCH_SIZE = 32, 4, 2, 64, 16
    v.OUT_INDICES = [0, 1, 2, 3]
    v.FINETUNE = finetune
    for key, value in vit.items():
        setattr(v, key, value)
    return cfg


def build(cfg):
    torch.manual_seed(0)
    return build_backbone(cfg)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_only_rein(family):
    backbone = build(tiny_cfg(**FAMILIES[family])).train()
    features = backbone(torch.randn(2, 3, 64, 96))
    for name, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)):
        assert features[name].shape == (2, 32, 64 // stride, 96 // stride), name
        assert backbone.output_shape()[name].stride == stride
        assert backbone.output_shape()[name].channels == 32
    assert features[REIN_QUERIES_KEY].shape == (6, 8)
    loss = sum(features[n].square().mean() for n in ("res2", "res3", "res4", "res5"))
    (loss + features[REIN_QUERIES_KEY].square().mean()).backward()
    assert all(p.grad is None for p in backbone.vit.parameters())
    assert all(not p.requires_grad for p in backbone.vit.parameters())
    assert all(p.grad is not None for p in backbone.reins.parameters())
    assert not backbone.vit.training and backbone.reins.training


def test_gradients_reach_the_first_blocks_rein_through_frozen_blocks():
    backbone = build(tiny_cfg()).train()
    backbone(torch.randn(1, 3, 64, 64))["res5"].sum().backward()  # the last block's output only
    grad_a = backbone.reins.learnable_tokens_a.grad
    assert grad_a[0].abs().sum() > 0


def test_rein_refines_patch_tokens_only_and_changes_features():
    rein_bb = build(tiny_cfg())
    frozen = build(tiny_cfg("freeze"))
    frozen.vit.load_state_dict(rein_bb.vit.state_dict())
    with torch.no_grad():
        rein_bb.reins.scale.fill_(1.0)
        tokens = torch.randn(2, 1 + 12, 32)
        refined = rein_bb._refine_block_output(2, None, (), tokens)
        assert torch.equal(refined[:, :1], tokens[:, :1])
        assert torch.allclose(refined[:, 1:], rein_bb.reins(tokens[:, 1:], 2))
        x = torch.randn(1, 3, 64, 64)
        assert not torch.allclose(rein_bb(x)["res5"], frozen(x)["res5"], atol=1e-4)


def test_finetune_modes():
    full = build(tiny_cfg("full")).train()
    assert full.reins is None and full.vit.training
    assert all(p.requires_grad for p in full.parameters())
    frozen = build(tiny_cfg("freeze")).train()
    assert frozen.reins is None and not frozen.vit.training
    assert not any(p.requires_grad for p in frozen.parameters())
    assert REIN_QUERIES_KEY not in frozen(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="FINETUNE"):
        build(tiny_cfg("lora"))


def test_inputs_not_divisible_by_the_patch_size_are_refused():
    backbone = build(tiny_cfg())
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        backbone(torch.randn(1, 3, 64, 70))


def test_bad_out_indices_and_names_are_explained():
    with pytest.raises(ValueError, match="OUT_INDICES"):
        build(tiny_cfg(OUT_INDICES=[1, 2, 3, 4]))
    with pytest.raises(ValueError, match="increasing"):
        build(tiny_cfg(OUT_INDICES=[3, 3, 3, 3]))
    with pytest.raises(ValueError, match="TIMM_NAME"):
        build(tiny_cfg(TIMM_NAME="vit_nonexistent"))
    cfg = tiny_cfg()
    cfg.MODEL.REIN.NAME = "Adapter"
    with pytest.raises(KeyError, match="LoRAReins"):
        build(cfg)


def test_dinov2_large_config_has_the_papers_trainable_parameters():
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(str(Path(__file__).resolve().parent.parent / "configs/dinov2/rein_dinov2_large_gta_512.yaml"))
    cfg.MODEL.VIT.WEIGHTS = ""  # the DINOv2 release is not available here; the count does not depend on it
    backbone = build_backbone(cfg)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 2_990_081


@pytest.mark.parametrize("finetune", ["rein", "freeze", "full"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_trainable_parameter_gets_a_gradient(family, finetune):
    """DDP (find_unused_parameters off) fails on the second step if a trainable parameter is off
    the forward path: the final norm, SAM's neck, the head and blocks after the last feature are
    removed, and Rein has one layer per block that runs."""
    cfg = tiny_cfg(finetune, **FAMILIES[family])
    cfg.MODEL.VIT.DEPTH = 5  # the fifth block is not needed for OUT_INDICES [0, 1, 2, 3]
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = finetune == "rein"
    backbone = build(cfg).train()
    assert len(backbone.vit.blocks) == 4
    features = backbone(torch.randn(1, 3, 64, 64))
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    if finetune == "freeze":  # nothing to train in the backbone: the head trains alone
        assert not trainable and not any(f.requires_grad for f in features.values())
        return
    sum(f.square().mean() for f in features.values()).backward()
    assert [n for n, p in trainable.items() if p.grad is None] == []
    if finetune == "rein":
        assert backbone.reins.num_layers == 4
