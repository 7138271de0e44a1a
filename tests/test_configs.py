"""Every shipped config parses (through the command-line loader, which refuses keys it would
ignore), and builds at tiny width; a mistyped or ignored key is refused with the key named."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from rein_d2.config import load_config
from rein_d2.data.class_check import check_run_classes
from rein_d2.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def load(path, *opts):
    return load_config(str(path), list(opts))


def shrink(cfg):
    """Same architecture family and settings, tiny widths; no weight files."""
    v, mf, head = cfg.MODEL.VIT, cfg.MODEL.MASK_FORMER, cfg.MODEL.SEM_SEG_HEAD
    v.WEIGHTS, v.EMBED_DIM, v.NUM_HEADS, v.DEPTH = "", 32, 2, max(v.OUT_INDICES) + 1
    cfg.MODEL.CNN.WEIGHTS = ""  # ReinCNN configs build at full size (ResNet-50 / ConvNeXt-L)
    mf.HIDDEN_DIM, mf.DIM_FEEDFORWARD, mf.DEC_LAYERS, mf.NHEADS = 32, 64, 3, 2
    head.CONVS_DIM, head.MASK_DIM, head.TRANSFORMER_ENC_LAYERS = 32, 32, 1
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_are_found():
    assert len(CONFIGS) >= 25


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses_and_builds(path):
    cfg = load(path)
    check_run_classes(cfg)  # NUM_CLASSES is the datasets' class count (DGSS 19), and they share one class list
    if "quickstart" not in path.parts:  # a paper setting (or Mask2Former's ADE20K one) and a release file
        # ADE20K: Mask2Former's schedule; the 1/16 semi-supervised fine-tuning: the release's 4000
        assert cfg.SOLVER.MAX_ITER == (160000 if "ade20k" in path.parts else 4000 if "1-16" in path.name else 40000)
        assert cfg.MODEL.VIT.WEIGHTS.startswith("checkpoints/")
    linked = cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY
    assert not linked or cfg.MODEL.REIN.TOKEN_LENGTH == cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    torch.manual_seed(0)
    model = build_model(shrink(cfg))
    # An FPN backbone (configs/semfpn) holds ReinViT as its bottom_up.
    trainable = {n.replace("backbone.bottom_up.", "backbone.") for n, p in model.named_parameters() if p.requires_grad}
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


GTA = CONFIG_DIR / "dinov2/rein_dinov2_large_gta_512.yaml"


@pytest.mark.parametrize("opts, message", [
    (["MODEL.REIN.TOKEN_LENGHT", "50"], r"unknown config key MODEL\.REIN\.TOKEN_LENGHT; did you mean MODEL\.REIN\.TOKEN_LENGTH\?"),
    (["MODEL.TOKEN_LENGTH", "50"], r"did you mean MODEL\.REIN\.TOKEN_LENGTH\?"),
    (["SOLVER.BASE_LR", "fast"], r"command-line override: Type mismatch .* SOLVER\.BASE_LR"),
    (["SOLVER.MAX_ITER"], r"odd length"),
])
def test_config_errors_name_the_key_and_the_closest_one(opts, message):
    with pytest.raises(ConfigError, match=message):
        load(GTA, *opts)


@pytest.mark.parametrize("key, value", [
    ("INPUT.DATASET_MAPPER_NAME", "mask_former_panoptic"), ("SOLVER.WEIGHT_DECAY_EMBED", "0.05"),
    ("TEST.AUG.FLIP", "False"), ("MODEL.SWIN.EMBED_DIM", "192"), ("MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "2.0"),
    ("MODEL.MASK_FORMER.ENC_LAYERS", "6"), ("SOLVER.MOMENTUM", "0.5"), ("SOLVER.STEPS", "(100,)"),
    ("MODEL.RESNETS.DEPTH", "101"), ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"),
    ("TEST.PRECISE_BN.ENABLED", "True"), ("INPUT.IMAGE_SIZE", "512"),
])
def test_keys_that_would_be_ignored_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"{key.replace('.', '[.]')} = .*: "):
        load(GTA, key, value)


def test_ignored_keys_at_their_defaults_and_honoured_keys_are_accepted():
    cfg = load(GTA, "SOLVER.WEIGHT_DECAY_EMBED", "0.0", "INPUT.DATASET_MAPPER_NAME", "mask_former_semantic",
               "SOLVER.WEIGHT_DECAY_NORM", "0.01", "INPUT.RANDOM_FLIP", "none", "MODEL.BACKBONE.NAME",
               "build_resnet_deeplab_backbone", "MODEL.RESNETS.DEPTH", "101")
    assert cfg.MODEL.RESNETS.DEPTH == 101  # honoured by Detectron2's ResNet backbone


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="config file nowhere.yaml not found"):
        load("nowhere.yaml")


def test_mean_over_must_name_test_datasets():
    with pytest.raises(ConfigError, match=r"TEST\.MEAN_OVER names \['dg_acdc_fog_val'\], which are not in DATASETS"):
        load(GTA, "TEST.MEAN_OVER", "['dg_acdc_fog_val']")
    assert load(GTA, "TEST.MEAN_OVER", "['dg_bdd_val']").TEST.MEAN_OVER == ["dg_bdd_val"]
