"""Every shipped config parses, and builds at tiny width."""
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from rein_d2 import add_rein_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def load(path):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def shrink(cfg):
    """Same architecture family and settings, tiny widths; no weight files."""
    v, mf, head = cfg.MODEL.VIT, cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    v.WEIGHTS, v.EMBED_DIM, v.NUM_HEADS, v.DEPTH = "", 32, 2, max(v.OUT_INDICES) + 1
    mf.HIDDEN_DIM, mf.DIM_FEEDFORWARD, mf.DEC_LAYERS, mf.NHEADS = 32, 64, 3, 2
    head.CONVS_DIM, head.MASK_DIM, head.TRANSFORMER_ENC_LAYERS = 32, 32, 1
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_are_found():
    assert len(CONFIGS) >= 25


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses_and_builds(path):
    cfg = load(path)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19
    if "quickstart" not in path.parts:  # a paper setting: the official schedule and a release file
        assert cfg.SOLVER.MAX_ITER == 40000 and cfg.MODEL.VIT.WEIGHTS.startswith("checkpoints/")
    linked = cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY
    assert not linked or cfg.MODEL.REIN.TOKEN_LENGTH == cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    torch.manual_seed(0)
    model = build_model(shrink(cfg))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    mode = cfg.MODEL.VIT.FINETUNE
    assert any(n.startswith("backbone.reins.") for n in trainable) == (mode == "rein")
    assert any(n.startswith("backbone.vit.") for n in trainable) == (mode == "full")
    assert any(n.startswith("sem_seg_head.") for n in trainable)


def test_recipes_match_the_paper():
    r512 = load(CONFIG_DIR / "dinov2/rein_dinov2_large_gta_512.yaml")
    assert (r512.SOLVER.BASE_LR, r512.SOLVER.IMS_PER_BATCH, r512.SOLVER.WARMUP_ITERS) == (1e-4, 4, 0)
    assert tuple(r512.TEST.SLIDE.STRIDE) == (341, 341) and r512.INPUT.MAX_SIZE_TRAIN == 2048
    assert list(r512.INPUT.MIN_SIZE_TRAIN) == [int(512 * x * 0.1) for x in range(5, 21)]
    r1024 = load(CONFIG_DIR / "dinov2/rein_dinov2_large_citys2acdc_1024.yaml")
    assert (r1024.SOLVER.BASE_LR, r1024.SOLVER.IMS_PER_BATCH, r1024.SOLVER.WARMUP_ITERS) == (6e-5, 8, 10000)
    assert tuple(r1024.TEST.SLIDE.STRIDE) == (683, 683) and r1024.MODEL.VIT.IMG_SIZE == 1024
    assert list(r1024.INPUT.MIN_SIZE_TRAIN) == [int(1024 * x * 0.1) for x in range(5, 21)]
