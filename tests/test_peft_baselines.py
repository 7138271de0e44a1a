"""The PEFT baselines of Table 4 (LoRA, AdaptFormer, VPT) in ReinViT: they train only their own
parameters, start as the frozen backbone (LoRA, AdaptFormer), keep the features' shape (VPT),
have the paper's sizes, survive a compact checkpoint, run through train_net.py, and are refused
where they cannot work; and the README's method table is tools/method_table.py's output."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from detectron2.modeling import build_backbone
from test_backbone import FAMILIES, tiny_cfg
from test_train_net import TINY

from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.config import load_config
from rein_d2.errors import ConfigError
from rein_d2.modeling.backbone import ReinViT, create_timm_vfm
from rein_d2.modeling.peft_methods import AdaptFormer, LoRA
from rein_d2.modeling.peft_methods.lora import projection_outputs

REPO = Path(__file__).resolve().parent.parent
METHODS = ("LoRA", "AdaptFormer", "VPT")
FEATURES = ("res2", "res3", "res4", "res5")
# Families with fused qkv (DINOv2 with registers, CLIP), separate q/v projections and rope (EVA02),
# and windowed NHWC blocks (SAM, which VPT refuses).
TRAIN_FAMILIES = ("dinov2_reg4", "eva02", "clip", "sam")


def method_cfg(method, family="dinov2", **peft):
    cfg = tiny_cfg(**FAMILIES[family])
    cfg.MODEL.REIN.NAME = method
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = False
    p = cfg.MODEL.PEFT
    p.LORA_RANK, p.ADAPTFORMER_BOTTLENECK, p.VPT_TOKENS = 4, 8, 5
    for key, value in peft.items():
        setattr(p, key, value)
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_backbone(cfg)


def feature_loss(features):
    return sum(features[name].square().mean() for name in FEATURES)


@pytest.mark.parametrize("method, family", [(m, f) for m in METHODS for f in TRAIN_FAMILIES
                                            if (m, f) != ("VPT", "sam")])  # refused: test_vpt_refuses_nhwc_blocks
def test_each_method_trains_only_its_own_parameters(method, family):
    backbone = build(method_cfg(method, family)).train()
    trainable = {n: p for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("reins.") for n in trainable)
    assert not any(p.requires_grad for p in backbone.vit.parameters())
    assert not backbone.vit.training and backbone.reins.training
    frozen = {n: p.detach().clone() for n, p in backbone.vit.named_parameters()}
    own = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-2)  # steps of ~lr, however small the gradient
    for _ in range(2):  # zero-initialised LoRA B / adapter up: A and down get gradients from the second step
        optimizer.zero_grad()
        feature_loss(backbone(torch.randn(2, 3, 64, 64))).backward()
        assert all(p.grad is not None for p in trainable.values())
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in backbone.vit.named_parameters())
    assert [n for n, p in trainable.items() if torch.equal(p, own[n])] == []


def paper_count(method, vfm="dinov2", layers=24, dims=1024):
    """Trainable parameters worked out by hand (Table 4's settings; LoRA on EVA02-L: q, k and v)."""
    rank, bottleneck, tokens = 8, 64, 150
    projections = 3 if vfm == "eva02" else 2
    return {"LoRA": layers * projections * (dims * rank + rank * dims),  # A and B of each projection
            "AdaptFormer": layers * (dims * bottleneck + bottleneck + bottleneck * dims + dims),
            "VPT": layers * tokens * dims}[method]


@pytest.mark.parametrize("vfm", ["dinov2", "eva02"])
@pytest.mark.parametrize("method", METHODS)
def test_large_configs_have_the_papers_trainable_parameters(method, vfm):
    cfg = load_config(str(REPO / f"configs/baselines/{method.lower()}_{vfm}_large_gta_512.yaml"))
    cfg.MODEL.VIT.WEIGHTS = ""  # the count does not depend on the weights
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    assert len(backbone.vit.blocks) == 24 and backbone.embed_dim == 1024
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == paper_count(method, vfm)
    # The paper's Table 4, in millions: 0.79 / 1.18 (LoRA on DINOv2-L / EVA02-L), 3.17, 3.69.
    paper = {("LoRA", "dinov2"): 0.79, ("LoRA", "eva02"): 1.18}.get((method, vfm), {"AdaptFormer": 3.17, "VPT": 3.69}.get(method))
    assert round(paper_count(method, vfm) / 1e6, 2) == paper


@pytest.mark.parametrize("family", ["dinov2", "eva02"])  # a fused qkv; separate q_proj / k_proj / v_proj
def test_lora_updates_exactly_the_chosen_projections(family):
    """Key only: the query and value outputs stay the frozen ones, the key gets B A x * scale."""
    backbone = build(method_cfg("LoRA", family, LORA_PROJECTIONS=["key"])).eval()
    assert set(backbone.reins.layers[0]) == {"key"}
    update = backbone.reins.layers[0]["key"]
    with torch.no_grad():
        update.lora_B.weight.normal_()
    x = torch.randn(2, 5, 32)
    for name, (linear, out_slice) in projection_outputs(backbone.vit.blocks[0].attn).items():
        frozen = torch.nn.functional.linear(x, linear.weight, linear.bias)[..., out_slice]
        updated = linear(x)[..., out_slice]
        if name == "key":
            torch.testing.assert_close(updated - frozen, update.lora_B(update.lora_A(x)) * update.scaling)
        else:
            assert torch.equal(updated, frozen), name


@pytest.mark.parametrize("projections", [["query", "query"], ["keys"], []])
def test_lora_refuses_unknown_or_repeated_projections(projections):
    with pytest.raises(ConfigError, match="LORA_PROJECTIONS"):
        build(method_cfg("LoRA", LORA_PROJECTIONS=projections))


@pytest.mark.parametrize("key, value, method", [("MODEL.PEFT.LORA_RANK", "4", "lora"),
                                                ("MODEL.PEFT.VPT_TOKENS", "10", "vpt"),
                                                ("MODEL.PEFT.ADAPTFORMER_BOTTLENECK", "32", "adaptformer")])
def test_a_methods_settings_are_refused_where_it_is_not_built(key, value, method):
    """Rein's config builds none of LoRA, VPT, AdaptFormer, nor does a frozen backbone: their keys would be ignored."""
    message = rf"{key.replace('.', '[.]')} = {value} .*read only by the"
    with pytest.raises(ConfigError, match=message):
        load_config(str(REPO / "configs/dinov2/rein_dinov2_large_gta_512.yaml"), [key, value])
    config = str(REPO / f"configs/baselines/{method}_dinov2_large_gta_512.yaml")
    with pytest.raises(ConfigError, match=message):
        load_config(config, ["MODEL.VIT.FINETUNE", "freeze", key, value])
    assert str(load_config(config, [key, value]).MODEL.PEFT[key.rsplit(".", 1)[1]]) == value


def unit_layer_scales(backbone):
    """Layer scales of 1, as trained ones are near, not DINOv2's 1e-5 start: every branch counts."""
    with torch.no_grad():
        for name, p in backbone.vit.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("gamma"):
                p.fill_(1.0)
    return backbone


def plain_timm_features(backbone, family, x):
    """The same weights in a plain timm model, without any hook: the frozen backbone's block outputs."""
    options = FAMILIES[family]
    kwargs = {} if options.get("DYNAMIC_IMG_SIZE") is False else {"dynamic_img_size": True}
    plain = timm.create_model(options["TIMM_NAME"], pretrained=False, num_classes=0, patch_size=16, img_size=64,
                              embed_dim=32, depth=4, num_heads=2, **kwargs).eval()
    missing, unexpected = plain.load_state_dict(backbone.vit.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("norm.", "fc_norm.", "head", "neck.")) for k in missing)
    return plain.forward_intermediates(x, indices=[0, 1, 2, 3], norm=False, output_fmt="NCHW",
                                       intermediates_only=True)


@pytest.mark.parametrize("family", ["dinov2_reg4", "eva02", "sam"])
@pytest.mark.parametrize("method", ["LoRA", "AdaptFormer"])
def test_lora_and_adaptformer_start_as_the_frozen_backbone(method, family):
    backbone = build(method_cfg(method, family)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        unit_layer_scales(backbone)
        expected = plain_timm_features(backbone, family, x)
        got = backbone(x)
        torch.testing.assert_close(got["res4"], expected[2], rtol=0, atol=0)  # block 2's map, unscaled
        zero = [p for n, p in backbone.reins.named_parameters() if n.endswith(("lora_B.weight", "up_proj.weight"))]
        assert zero and all(not p.any() for p in zero)
        for p in zero:  # the test can fail: a non-zero update changes the features
            p.normal_()
        assert not torch.allclose(backbone(x)["res4"], expected[2], atol=1e-4)


@pytest.mark.parametrize("family", ["dinov2_reg4", "eva02"])
def test_vpt_adds_prompts_to_each_block_input_and_keeps_the_features(family):
    backbone = build(method_cfg("VPT", family)).eval()
    vpt, prefix = backbone.reins, backbone.num_prefix_tokens
    seen = []
    backbone.vit.blocks[1].attn.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    frozen = unit_layer_scales(build(tiny_cfg("freeze", **FAMILIES[family])).eval())
    unit_layer_scales(backbone)
    assert all(torch.equal(p, q) for p, q in zip(frozen.vit.state_dict().values(), backbone.vit.state_dict().values()))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features, frozen_features = backbone(x), frozen(x)
    patches = 4 * 6
    assert seen[0].shape == (2, prefix + 5 + patches, 32)  # the prompts are in the block's attention input
    assert [f.shape for f in features.values()] == [f.shape for f in frozen_features.values()]
    assert not torch.allclose(features["res4"], frozen_features["res4"], atol=1e-4)  # the prompts matter
    tokens = torch.randn(2, prefix + patches, 32)
    prompted = vpt.before_block(tokens, 3, num_prefix_tokens=prefix)
    assert torch.equal(prompted[:, :prefix], tokens[:, :prefix])
    assert torch.equal(prompted[:, prefix:prefix + 5], vpt.prompt_tokens[3].expand(2, -1, -1))
    assert torch.equal(prompted[:, prefix + 5:], tokens[:, prefix:])
    assert torch.equal(vpt(prompted, 3, num_prefix_tokens=prefix), tokens)
    if family == "eva02":  # the prompts stay out of the rotary embedding, as the class token
        assert {block.attn.num_prefix_tokens for block in backbone.vit.blocks} == {prefix + 5}


def test_vpt_prompts_start_in_the_official_range():
    cfg = method_cfg("VPT", VPT_TOKENS=150)
    prompts = build(cfg).reins.prompt_tokens
    bound = (6.0 / (3 * 16 * 16 + 32)) ** 0.5  # VPT's xavier-like bound for 16x16 patches, 32 channels
    assert prompts.shape == (4, 150, 32) and prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(method):
    """The hooks run again in the recomputation (AdaptFormer's kept MLP input, LoRA's check)."""
    no_dropout = {"LORA_DROPOUT": 0.0, "ADAPTFORMER_DROPOUT": 0.0}
    grads = []
    for checkpoint in (False, True):
        cfg = method_cfg(method, **no_dropout)
        cfg.MODEL.VIT.GRAD_CHECKPOINT = checkpoint
        backbone = build(cfg).train()
        with torch.no_grad():
            for p in backbone.reins.parameters():
                p.normal_(std=0.1)  # away from the zero start, so that every gradient is non-zero
        torch.manual_seed(1)
        feature_loss(backbone(torch.randn(2, 3, 64, 64))).backward()
        grads.append({n: p.grad for n, p in backbone.reins.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
        assert grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", METHODS)
def test_compact_checkpoint_round_trip(method, tmp_path):
    model = unit_layer_scales(build(method_cfg(method)).eval())
    with torch.no_grad():
        for p in model.reins.parameters():
            p.normal_(std=0.1)
    CompactCheckpointer(model, str(tmp_path)).save("model")
    saved = torch.load(tmp_path / "model.pth", weights_only=True)["model"]
    assert saved and all(k.startswith("reins.") for k in saved)
    fresh = unit_layer_scales(build(method_cfg(method)).eval())  # the same frozen weights, its own start
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(fresh(x)["res5"], model(x)["res5"], atol=1e-4)
        CompactCheckpointer(fresh).load(str(tmp_path / "model.pth"))
        assert torch.equal(fresh(x)["res5"], model(x)["res5"])


def test_vpt_refuses_nhwc_blocks():
    backbone = build(method_cfg("VPT", "sam"))
    with pytest.raises(ConfigError, match="VPT changes the number of tokens at block 0.*NHWC"):
        backbone(torch.randn(1, 3, 64, 64))


def test_lora_refuses_an_attention_that_bypasses_its_projections():
    """timm's EVA with a fused qkv and separate q / v biases computes F.linear(x, qkv.weight, ...)."""
    vit = create_timm_vfm("eva02_large_patch14_224", 16, 64, embed_dim=32, depth=4, num_heads=2, qkv_fused=True)
    backbone = ReinViT(vit=vit, patch_size=16, out_indices=[0, 1, 2, 3], peft=LoRA(4, 32, rank=4))
    with pytest.raises(ConfigError, match="block 0's attention did not call its projection modules"):
        backbone(torch.randn(1, 3, 64, 64))


def test_adaptformer_refuses_post_norm_blocks():
    """timm's EvaBlockPostNorm computes x + norm2(mlp(x)): norm2 does not see the MLP branch's input."""
    vit = create_timm_vfm("eva02_large_patch14_224", 16, 64, embed_dim=32, depth=4, num_heads=2, use_post_norm=True)
    backbone = ReinViT(vit=vit, patch_size=16, out_indices=[0, 1, 2, 3], peft=AdaptFormer(4, 32, bottleneck=8))
    with pytest.raises(ConfigError, match=r"block 0 \(EvaBlockPostNorm\) runs its mlp before norm2"):
        backbone(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("method", METHODS)
def test_methods_without_tokens_refuse_the_query_link_and_cnns(method):
    cfg = method_cfg(method)
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = True
    with pytest.raises(ConfigError, match="LINK_TOKEN_TO_QUERY False"):
        build(cfg)
    cfg = method_cfg(method)
    cfg.MODEL.BACKBONE.NAME = "ReinCNN"
    cfg.MODEL.CNN.TIMM_NAME = "resnet18"
    with pytest.raises(ConfigError, match="ReinCNN refines block outputs only"):
        build(cfg)


def test_train_net_trains_lora_from_the_command_line(synthetic_source_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_net.py"), "--config-file",
           str(REPO / "configs/baselines/lora_dinov2_large_gta_512.yaml"), *TINY,
           "DATASETS.TRAIN", "('synthetic_dg_source_val',)", "DATASETS.TEST", "()",
           "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]
    env = dict(os.environ, DETECTRON2_DATASETS=str(synthetic_source_root), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    backbone_keys = {k for k in saved if k.startswith("backbone.")}
    assert backbone_keys and all(k.startswith("backbone.reins.layers.") for k in backbone_keys)
    assert len(backbone_keys) == 4 * 2 * 2  # blocks x (query, value) x (A, B)


@pytest.fixture(scope="module")
def method_table():
    done = subprocess.run([sys.executable, str(REPO / "tools/method_table.py")], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_method_table_lists_the_counts_built_from_the_configs(method_table):
    """Every row of Tables 4 and 14 has a config whose built count is the paper's, to its two decimals."""
    rows = [line for line in method_table.splitlines() if ".yaml" in line]
    assert len(rows) == 2 * 12 + 2 * 3
    for line in rows:
        built, paper = re.search(r"\| ([\d.]+)M \(([\d,]+)\) \| ([\d.]+)M, ", line).group(2, 3)
        assert f"{int(built.replace(',', '')) / 1e6:.2f}" == paper, line
    by_config = {re.search(r"`(\S+\.yaml)`", line)[1]: line for line in rows}
    for method in METHODS:
        for vfm in ("dinov2", "eva02"):
            assert f"({paper_count(method, vfm):,})" in by_config[f"baselines/{method.lower()}_{vfm}_large_gta_512.yaml"]
    assert "(2,990,081)" in by_config["dinov2/rein_dinov2_large_gta_512.yaml"]  # the paper's 2.99M
    assert "| 0.00M (0) | 0.00M, 63.3 / 56.1 / 63.9 |" in by_config["baselines/freeze_dinov2_large_gta_512.yaml"]


def test_readme_method_table_is_the_tools_output(method_table):
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- method-table -->\n(.*?)\n<!-- /method-table -->", readme, re.DOTALL)
    assert found, "README.md has no <!-- method-table --> ... <!-- /method-table --> section"
    assert found[1].strip() == method_table.strip(), "regenerate it: python tools/method_table.py"
