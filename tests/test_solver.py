"""Official Rein optimiser groups and learning-rate schedule."""
import logging

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from rein_d2 import add_rein_config
from rein_d2.solver import build_lr_scheduler, build_optimizer


class Named(nn.Module):
    """A module tree with the parameter names of a Rein Mask2Former."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.vit = nn.Module()
        self.backbone.vit.proj = nn.Linear(4, 4)
        self.backbone.vit.norm = nn.LayerNorm(4)
        self.backbone.reins = nn.Module()
        self.backbone.reins.learnable_tokens_a = nn.Parameter(torch.zeros(2, 3))
        self.backbone.reins.scale = nn.Parameter(torch.tensor(1e-3))
        self.backbone.reins.mlp_delta_f = nn.Linear(4, 4)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.predictor = nn.Module()
        self.sem_seg_head.predictor.query_embed = nn.Embedding(5, 4)
        self.sem_seg_head.predictor.query_feat = nn.Embedding(5, 4)
        self.sem_seg_head.predictor.level_embed = nn.Embedding(3, 4)
        self.sem_seg_head.predictor.decoder_norm = nn.LayerNorm(4)
        self.sem_seg_head.input_proj = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.sem_seg_head.pixel_decoder = nn.Module()
        self.sem_seg_head.pixel_decoder.transformer = nn.Module()
        self.sem_seg_head.pixel_decoder.transformer.level_embed = nn.Parameter(torch.zeros(3, 4))


def cfg_for(**solver):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MAX_ITER = 1e-4, 0.05, 40000
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupThenPolyLR"
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = 0, 1e-6
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def settings_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_rein_groups_decay_everything_but_norms_embeddings_and_rein_tokens():
    model = Named()
    model.backbone.vit.requires_grad_(False)
    got = settings_by_name(model, build_optimizer(cfg_for(), model))
    assert not any(name.startswith("backbone.vit") for name in got)
    no_decay = {"backbone.reins.learnable_tokens_a", "backbone.reins.scale", "sem_seg_head.predictor.query_embed.weight",
                "sem_seg_head.predictor.level_embed.weight", "sem_seg_head.predictor.decoder_norm.weight",
                "sem_seg_head.predictor.decoder_norm.bias", "sem_seg_head.input_proj.1.weight",
                "sem_seg_head.input_proj.1.bias"}
    for name, (lr, wd) in got.items():
        assert lr == pytest.approx(1e-4)
        assert wd == (0.0 if name in no_decay else 0.05), name
    assert got["sem_seg_head.predictor.query_feat.weight"][1] == 0.05
    assert got["sem_seg_head.pixel_decoder.transformer.level_embed"][1] == 0.05  # MMDet's level_encoding
    assert got["backbone.reins.mlp_delta_f.bias"][1] == 0.05


def table_rows(report):
    """The body rows of a pipe table, as lists of stripped cells."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_groups_are_reported_with_counts_lr_and_decay(caplog):
    model = Named()
    model.backbone.vit.requires_grad_(False)
    with caplog.at_level(logging.INFO, logger="rein_d2"):
        optimizer = build_optimizer(cfg_for(), model)
    reports = [r.getMessage() for r in caplog.records if r.name == "rein_d2.solver"]
    assert len(reports) == 1 and reports[0].startswith("Optimizer parameter groups (2):")
    rows = table_rows(reports[0])
    expected = [[f"{g['lr']:g}", f"{g['weight_decay']:g}", str(len(g["params"])),
                 f"{sum(p.numel() for p in g['params']):,}"] for g in optimizer.param_groups]
    assert [row[:4] for row in rows] == expected
    by_decay = {row[1]: row for row in rows}
    # tokens 2x3, scale 1, query and level embeddings 5x4 + 3x4, a LayerNorm and a GroupNorm 2 x (4 + 4)
    assert by_decay["0"][:4] == ["0.0001", "0", "8", "55"]
    # mlp_delta_f 16 + 4, query_feat 20, the conv 16 + 4, the pixel decoder's level embedding 12
    assert by_decay["0.05"][:4] == ["0.0001", "0.05", "6", "72"]
    assert by_decay["0"][4].startswith("backbone.reins.learnable_tokens_a, backbone.reins.scale, ")


def test_full_finetuning_scales_the_vfm_learning_rate_only():
    model = Named()
    got = settings_by_name(model, build_optimizer(cfg_for(BACKBONE_MULTIPLIER=0.1), model))
    assert got["backbone.vit.proj.weight"] == (pytest.approx(1e-5), 0.05)
    assert got["backbone.vit.norm.weight"] == (pytest.approx(1e-5), 0.0)
    assert got["backbone.reins.mlp_delta_f.weight"][0] == pytest.approx(1e-4)


def test_full_finetuning_scales_a_cnn_backbone_too():
    """ReinCNN's own parameters (stems, blocks, stage norms) take the multiplier; the head does not."""
    import timm

    from rein_d2.modeling.backbone.cnn import ReinCNN, split_stages

    model = nn.Module()
    cnn = timm.create_model("convnext_large", pretrained=False, num_classes=0, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
    model.backbone = ReinCNN(stages=split_stages(cnn), finetune="full", reins=None)
    model.sem_seg_head = nn.Linear(8, 2)
    got = settings_by_name(model, build_optimizer(cfg_for(BACKBONE_MULTIPLIER=0.1), model))
    backbone = [name for name in got if name.startswith("backbone.")]
    assert {name.split(".")[1] for name in backbone} == {"entries", "blocks", "out_norms"}
    assert all(got[name][0] == pytest.approx(1e-5) for name in backbone)
    assert got["sem_seg_head.weight"][0] == pytest.approx(1e-4)


def test_detectron2_decay_keys_are_honoured():
    model = Named()
    model.backbone.vit.requires_grad_(False)
    cfg = cfg_for(WEIGHT_DECAY_NORM=0.01, WEIGHT_DECAY_BIAS=0.02, BIAS_LR_FACTOR=2.0)
    got = settings_by_name(model, build_optimizer(cfg, model))
    assert got["sem_seg_head.predictor.decoder_norm.weight"] == (pytest.approx(1e-4), 0.01)
    assert got["sem_seg_head.input_proj.1.bias"] == (pytest.approx(2e-4), 0.01)  # a norm's bias: norm decay
    assert got["backbone.reins.mlp_delta_f.bias"] == (pytest.approx(2e-4), 0.02)
    assert got["backbone.reins.mlp_delta_f.weight"] == (pytest.approx(1e-4), 0.05)
    assert got["backbone.reins.scale"] == (pytest.approx(1e-4), 0.0)


def lrs_at(cfg, iterations):
    model = Named()
    model.backbone.vit.requires_grad_(False)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    out, done = {}, 0
    for it in sorted(iterations):
        for _ in range(it - done):
            optimizer.step()
            scheduler.step()
        done = it
        out[it] = optimizer.param_groups[0]["lr"]
    return out


def test_poly_from_iteration_zero_as_the_512_recipe():
    """MMEngine's PolyLR(begin=0, end=T) decays over T - 1 steps: 0 on the last iteration."""
    cfg = cfg_for(MAX_ITER=100)
    got = lrs_at(cfg, [0, 1, 50, 98, 99])
    for it, lr in got.items():
        assert lr == pytest.approx(1e-4 * (1 - it / 99) ** 0.9, abs=0), it
    assert got[99] == 0.0


def test_linear_warmup_then_poly_as_the_1024_recipe():
    """LinearLR(begin=0, end=W) reaches 1 at W - 1; PolyLR(begin=W, end=T) then decays over T - W - 1 steps."""
    cfg = cfg_for(MAX_ITER=100, WARMUP_ITERS=25, BASE_LR=6e-5)
    got = lrs_at(cfg, [0, 10, 24, 25, 60, 99])
    assert got[0] == pytest.approx(6e-5 * 1e-6)
    assert got[10] == pytest.approx(6e-5 * (1e-6 + (1 - 1e-6) * 10 / 24))
    assert got[24] == pytest.approx(6e-5) and got[25] == pytest.approx(6e-5)
    assert got[60] == pytest.approx(6e-5 * (1 - 35 / 74) ** 0.9)
    assert got[99] == 0.0


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="WARMUP_ITERS"):
        lrs_at(cfg_for(MAX_ITER=10, WARMUP_ITERS=10), [1])
    frozen = Named().requires_grad_(False)
    with pytest.raises(ValueError, match="FINETUNE"):
        build_optimizer(cfg_for(), frozen)
