"""Rein on CNNs (Table 8): one Rein per stage after every block, the official release layouts,
the paper configs' trainable counts, and every fine-tune mode's gradients."""
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from detectron2.config import get_cfg

from rein_d2 import add_rein_config
from rein_d2.checkpoint.cnn_weights import official_cnn_to_timm
from rein_d2.config import load_config
from rein_d2.modeling.backbone.cnn import ReinCNN, split_stages
from rein_d2.modeling.backbone.peft import build_peft
from rein_d2.modeling.rein import REIN_QUERIES_KEY

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "cnns"
TINY_RESNET = dict(layers=(1, 2, 1, 1))
TINY_CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


def cfg_with(hidden_dim: int = 16):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = hidden_dim
    cfg.MODEL.REIN.TOKEN_LENGTH = 6
    cfg.MODEL.REIN.LORA_DIM = 4
    return cfg


def rein_cnn(name: str, finetune: str = "rein", **arch) -> ReinCNN:
    torch.manual_seed(0)
    cnn = timm.create_model(name, pretrained=False, num_classes=0, **arch)
    stages = split_stages(cnn)
    reins = ([build_peft(cfg_with(), len(b), w, 16) for b, w in zip(stages.blocks, stages.widths)]
             if finetune == "rein" else None)
    return ReinCNN(stages=stages, finetune=finetune, reins=reins).eval()


def official_forward(backbone: ReinCNN, x: torch.Tensor) -> list[torch.Tensor]:
    """ReinsResNetV1c / ReinsConvNeXt restated: after every block of stage i, reins[i] on the
    flattened map; the stage output through its norm."""
    outs = []
    for i, (entry, blocks, norm) in enumerate(zip(backbone.entries, backbone.blocks, backbone.out_norms)):
        x = entry(x)
        for j, block in enumerate(blocks):
            x = block.forward(x)  # the block alone, without the hook that refines it
            b, c, h, w = x.shape
            x = backbone.reins[i](x.flatten(-2, -1).permute(0, 2, 1), j).permute(0, 2, 1).reshape(b, c, h, w)
        outs.append(norm(x))
    return outs


@pytest.mark.parametrize("name, arch", [("resnet50c", TINY_RESNET), ("convnext_large", TINY_CONVNEXT)])
def test_every_block_of_every_stage_is_refined_as_the_official_forward(name, arch):
    backbone = rein_cnn(name, **arch)
    with torch.no_grad():
        for rein in backbone.reins:
            rein.scale.fill_(0.5)  # a visible refinement
        x = torch.randn(2, 3, 64, 64)
        features = backbone(x)
        expected = official_forward(backbone, x)
    for got, want in zip((features[k] for k in ("res2", "res3", "res4", "res5")), expected):
        assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(features[REIN_QUERIES_KEY], sum(r.queries() for r in backbone.reins), atol=1e-6)
    assert [features[k].shape[1] for k in ("res2", "res3", "res4", "res5")] == split_stages(
        timm.create_model(name, pretrained=False, num_classes=0, **arch)).widths


@pytest.mark.parametrize("finetune", ["rein", "freeze", "full"])
@pytest.mark.parametrize("name, arch", [("resnet50c", TINY_RESNET), ("convnext_large", TINY_CONVNEXT)])
def test_every_trainable_parameter_gets_a_gradient(name, arch, finetune):
    backbone = rein_cnn(name, finetune, **arch).train()
    features = backbone(torch.randn(1, 3, 64, 64))
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert bool(trainable) == (finetune != "freeze")
    if trainable:
        sum(f.sum() for f in features.values()).backward()
    owners = {n.split(".")[0] for n in trainable}
    assert owners == {"rein": {"reins"}, "freeze": set()}.get(finetune, owners) and (
        finetune != "full" or owners >= {"entries", "blocks"} and "reins" not in owners)
    assert [n for n, p in trainable.items() if p.grad is None] == []
    assert not any(m.training for m in backbone.blocks.modules())  # BatchNorm statistics never move


# Written from MMSegmentation's ResNetV1c (deep stem: conv/BN/ReLU x3 as stem.0..8) and
# torchvision-style Bottleneck names (conv1..3, bn1..3, downsample.0/1), plus the classifier.
def mmseg_resnet_v1c_keys(layers: tuple[int, ...]) -> list[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = [f"stem.{i}.weight" for i in (0, 3, 6)] + [f"stem.{i}.{p}" for i in (1, 4, 7) for p in bn]
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            prefix = f"layer{stage}.{b}."
            keys += [prefix + f"conv{k}.weight" for k in (1, 2, 3)]
            keys += [prefix + f"bn{k}.{p}" for k in (1, 2, 3) for p in bn]
            if b == 0:
                keys += [prefix + "downsample.0.weight"] + [prefix + f"downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


# Written from MMPretrain's ConvNeXt: downsample_layers (stem: conv, norm; then norm, conv),
# stages.<i>.<j> blocks, stage norms norm<i>; a classification release nests them under
# `backbone.` beside its `head.`.
def mmpretrain_convnext_keys(depths: tuple[int, ...], stage_norms: tuple[int, ...]) -> list[str]:
    keys = []
    for i in range(len(depths)):
        keys += [f"downsample_layers.{i}.{k}.{p}" for k in (0, 1) for p in ("weight", "bias")]
        for j in range(depths[i]):
            keys += [f"stages.{i}.{j}.{m}.{p}" for m in ("depthwise_conv", "norm", "pointwise_conv1",
                                                          "pointwise_conv2") for p in ("weight", "bias")]
            keys.append(f"stages.{i}.{j}.gamma")
    keys += [f"norm{i}.{p}" for i in stage_norms for p in ("weight", "bias")]
    return ["backbone." + k for k in keys] + ["head.fc.weight", "head.fc.bias"]


def test_mmseg_resnet_v1c_release_renames_onto_timm_with_nothing_missing(tmp_path):
    model = timm.create_model("resnet50c", pretrained=False, num_classes=0, **TINY_RESNET)
    keys = mmseg_resnet_v1c_keys(TINY_RESNET["layers"])
    converted = official_cnn_to_timm(dict.fromkeys(keys, torch.zeros(1)))
    assert set(converted) == set(model.state_dict())
    assert "fc.weight" not in converted and "bn1.weight" in converted and "conv1.6.weight" in converted


def test_mmpretrain_convnext_release_renames_onto_timm_and_the_stage_norms(tmp_path):
    model = timm.create_model("convnext_large", pretrained=False, num_classes=0, **TINY_CONVNEXT)
    keys = mmpretrain_convnext_keys(TINY_CONVNEXT["depths"], stage_norms=(0, 1, 2, 3))
    converted = official_cnn_to_timm(dict.fromkeys(keys, torch.zeros(1)))
    model_keys = {k for k in model.state_dict() if not k.startswith("head.")}
    assert set(converted) == model_keys | {f"out_norms.{i}.{p}" for i in range(4) for p in ("weight", "bias")}


def official_names_to_timm(keys: list[str]) -> dict[str, str]:
    """timm name -> official name, read off the conversion of numbered tensors."""
    numbered = official_cnn_to_timm({k: torch.tensor(float(i)) for i, k in enumerate(keys)})
    return {name: keys[int(v)] for name, v in numbered.items()}


def test_a_convnext_classification_release_loads_with_its_last_stage_norm(tmp_path):
    """The IN-21k classifier has norm3 only; values land where the official names say."""
    model = timm.create_model("convnext_large", pretrained=False, num_classes=0, **TINY_CONVNEXT)
    shapes = {k: v.shape for k, v in model.state_dict().items()} | {"out_norms.3.weight": (32,),
                                                                      "out_norms.3.bias": (32,)}
    keys = mmpretrain_convnext_keys(TINY_CONVNEXT["depths"], stage_norms=(3,))
    g = torch.Generator().manual_seed(2)
    official = {key: torch.randn(shapes[name], generator=g) for name, key in official_names_to_timm(keys).items()}
    official |= {"head.fc.weight": torch.randn(10, 32), "head.fc.bias": torch.randn(10)}
    torch.save({"meta": {}, "state_dict": official}, tmp_path / "convnext_in21k.pth")
    cfg = load_config(str(CONFIGS / "rein_convnext_large_gta_512.yaml"),
                      ["MODEL.CNN.WEIGHTS", str(tmp_path / "convnext_in21k.pth")])
    real = timm.create_model
    with mock.patch("timm.create_model", lambda *a, **k: real(*a, **{**k, **TINY_CONVNEXT})):
        backbone = ReinCNN(cfg)
    block = backbone.blocks[2][1]
    assert torch.equal(block.conv_dw.weight, official["backbone.stages.2.1.depthwise_conv.weight"])
    assert torch.equal(block.mlp.fc2.weight, official["backbone.stages.2.1.pointwise_conv2.weight"])
    assert torch.equal(block.gamma, official["backbone.stages.2.1.gamma"])
    assert torch.equal(backbone.entries[0][0][0].weight, official["backbone.downsample_layers.0.0.weight"])
    assert torch.equal(backbone.entries[1][0].weight, official["backbone.downsample_layers.1.0.weight"])
    assert torch.equal(backbone.out_norms[3].weight, official["backbone.norm3.weight"])
    assert torch.equal(backbone.out_norms[0].weight, torch.ones(8))  # not in the file: initialised


# Table 8's backbones with Rein (r=16, m=100, 256 queries), worked out by hand per stage of
# (blocks L, width c): tokens L*100*16 + L*16*c, two linears 2*(c*c + c), scale 1,
# transform c*256 + 256, merge 768*256 + 256.
TABLE_8 = {
    # (3,256) 411,329 + (4,512) 892,673 + (6,1024) 2,666,369 + (3,2048) 9,217,217
    "rein_resnet50_gta_512.yaml": 13_187_588,
    # (3,192) 334,401 + (3,384) 614,337 + (27,768) 1,949,889 + (3,1536) 5,390,529
    "rein_convnext_large_gta_512.yaml": 8_289_156,
}


@pytest.mark.parametrize("config", sorted(TABLE_8))
def test_the_table_8_configs_have_these_trainable_counts(config):
    cfg = load_config(str(CONFIGS / config), ["MODEL.CNN.WEIGHTS", ""])
    with torch.device("meta"):
        backbone = ReinCNN(cfg)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == TABLE_8[config]


def test_a_compact_checkpoint_holds_the_reins_only_and_restores_the_outputs(tmp_path):
    from rein_d2.checkpoint.compact import CompactCheckpointer

    backbone = rein_cnn("convnext_large", **TINY_CONVNEXT)
    with torch.no_grad():
        for rein in backbone.reins:
            rein.scale.fill_(0.3)
    CompactCheckpointer(backbone, str(tmp_path)).save("model_final")
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert saved and all(k.startswith("reins.") for k in saved)
    fresh = rein_cnn("convnext_large", **TINY_CONVNEXT)  # same seed: the same frozen CNN
    CompactCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x)["res5"], backbone(x)["res5"])
