"""Config keys of rein-d2: the official Mask2Former keys plus MODEL.VIT, MODEL.CNN, MODEL.REIN, TEST.SLIDE, TEST.AMP, DATASETS.FILES.

Mask2Former's keys and defaults are the official ones, so its YAML files parse unchanged.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

from .config_check import check_honoured, leaf_items
from .data.sem_seg_folder import register_dataset_files
from .errors import ConfigError


def add_maskformer2_config(cfg: CN) -> None:
    """Keys of the official Mask2Former (same names, same defaults).

    The official train_net adds DeepLab's keys first (its configs set MODEL.RESNETS.STEM_TYPE,
    RES5_MULTI_GRID and the WarmupPolyLR keys), and MODEL.SWIN for its Swin configs.
    """
    add_deeplab_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    mf = cfg.MODEL.MASK_FORMER = CN()
    mf.DEEP_SUPERVISION = True
    mf.NO_OBJECT_WEIGHT = 0.1
    mf.CLASS_WEIGHT = 1.0
    mf.DICE_WEIGHT = 1.0
    mf.MASK_WEIGHT = 20.0
    mf.NHEADS = 8
    mf.DROPOUT = 0.1
    mf.DIM_FEEDFORWARD = 2048
    mf.ENC_LAYERS = 0
    mf.DEC_LAYERS = 6
    mf.PRE_NORM = False
    mf.HIDDEN_DIM = 256
    mf.NUM_OBJECT_QUERIES = 100
    mf.TRANSFORMER_IN_FEATURE = "res5"
    mf.ENFORCE_INPUT_PROJ = False
    mf.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    mf.SIZE_DIVISIBILITY = 32
    mf.TRAIN_NUM_POINTS = 112 * 112
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    mf.TEST = CN()
    mf.TEST.SEMANTIC_ON = True
    mf.TEST.INSTANCE_ON = False
    mf.TEST.PANOPTIC_ON = False
    mf.TEST.OBJECT_MASK_THRESHOLD = 0.0
    mf.TEST.OVERLAP_THRESHOLD = 0.0
    mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    head = cfg.MODEL.SEM_SEG_HEAD
    head.MASK_DIM = 256
    head.TRANSFORMER_ENC_LAYERS = 0
    head.PIXEL_DECODER_NAME = "BasePixelDecoder"
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # torch.compile backend ("inductor") for the deformable attention's elementwise work (sampling
    # points to value rows and bilinear weights, about 25 passes fused into a few); "" runs eagerly.
    # An input size uses the compiled function only after its first call matched the eager one.
    head.DEFORM_ATTN_COMPILE = ""

    swin = cfg.MODEL.SWIN = CN()
    swin.PRETRAIN_IMG_SIZE = 224
    swin.PATCH_SIZE = 4
    swin.EMBED_DIM = 96
    swin.DEPTHS = [2, 2, 6, 2]
    swin.NUM_HEADS = [3, 6, 12, 24]
    swin.WINDOW_SIZE = 7
    swin.MLP_RATIO = 4.0
    swin.QKV_BIAS = True
    swin.QK_SCALE = None
    swin.DROP_RATE = 0.0
    swin.ATTN_DROP_RATE = 0.0
    swin.DROP_PATH_RATE = 0.3
    swin.APE = False
    swin.PATCH_NORM = True
    swin.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    swin.USE_CHECKPOINT = False


def add_vit_config(cfg: CN) -> None:
    """MODEL.VIT: the timm vision foundation model and how it is fine-tuned."""
    vit = cfg.MODEL.VIT = CN()
    # timm architecture name, built with random weights; weights come from WEIGHTS.
    vit.TIMM_NAME = "vit_large_patch14_dinov2"
    # Patch size and pre-training image size of the built model: the official Rein
    # configs convert DINOv2's patch 14 / 518 px to patch 16 / 512 px.
    vit.PATCH_SIZE = 16
    vit.IMG_SIZE = 512
    # Blocks whose (refined) outputs become res2..res5.
    vit.OUT_INDICES = [7, 11, 15, 23]
    # Resample the position grid to any input size in the forward pass; SAM's timm model
    # does that natively and takes no such argument, so its configs set False.
    vit.DYNAMIC_IMG_SIZE = True
    vit.DROP_PATH_RATE = 0.0
    # Architecture overrides for ablations and tiny test models; 0 keeps timm's value.
    vit.EMBED_DIM = 0
    vit.DEPTH = 0
    vit.NUM_HEADS = 0
    # Local weights file (.pth, .pt, .bin or .safetensors); "" keeps random weights.
    vit.WEIGHTS = ""
    # "rein": frozen VFM + trainable Rein; "freeze": frozen VFM; "full": all trainable.
    vit.FINETUNE = "rein"
    # Activation checkpointing of every block (timm's set_grad_checkpointing): their activations
    # are recomputed in the backward pass, Rein's included, trading time for memory.
    vit.GRAD_CHECKPOINT = False
    # torch.compile backend for each block's forward ("inductor", or e.g. "aot_eager" to debug);
    # "" runs eagerly. Rein's hooks stay eager; identical blocks share one compiled graph.
    vit.COMPILE = ""


def add_cnn_config(cfg: CN) -> None:
    """MODEL.CNN: the timm CNN of MODEL.BACKBONE.NAME "ReinCNN" (the paper's Table 8)."""
    cnn = cfg.MODEL.CNN = CN()
    # resnet50c / resnet101c (ResNet V1c, as MMSeg's) or convnext_large, with random weights.
    cnn.TIMM_NAME = "resnet50c"
    # timm file, or the official MMSeg ResNetV1c / MMPretrain ConvNeXt release; "" keeps random weights.
    cnn.WEIGHTS = ""
    cnn.FINETUNE = "rein"  # as MODEL.VIT.FINETUNE
    cnn.DROP_PATH_RATE = 0.0


def add_dgss_augmentation_config(cfg: CN) -> None:
    """INPUT.PASTA, INPUT.GTR_LTR, MODEL.ADVSTYLE: the DGSS augmentation baselines of the paper's Table 4."""
    # PASTA (Chattopadhyay et al., ICCV 2023, rein_d2/data/pasta.py), with the paper's parameters:
    # amplitude noise std (2 ALPHA r / sqrt(H^2 + W^2))^K + BETA at frequency radius r.
    pasta = cfg.INPUT.PASTA = CN()
    pasta.ENABLED = False
    pasta.ALPHA = 3.0
    pasta.BETA = 0.25
    pasta.K = 2.0
    pasta.PROB = 1.0  # the official code applies it to every sample
    # GTR-LTR (Peng et al., TIP 2021) without a style network (rein_d2/data/texture_randomization.py):
    # blends with random textures of TEXTURE_DIR (the paper uses Painter by Numbers), the whole image
    # (GLOBAL_PROB) or random regions covering a fraction in LOCAL_AREA (LOCAL_PROB), weight in BLEND.
    gtr = cfg.INPUT.GTR_LTR = CN()
    gtr.ENABLED = False
    gtr.TEXTURE_DIR = ""
    gtr.GLOBAL_PROB = 1 / 3
    gtr.LOCAL_PROB = 1 / 3
    gtr.BLEND = [0.3, 0.7]
    gtr.LOCAL_AREA = [0.2, 0.5]
    # AdvStyle (Zhong et al., NeurIPS 2022, rein_d2/engine/advstyle.py): per-image channel mean / std of
    # the normalised image, moved by STEPS gradient-ascent steps of size LR on the training loss; the
    # model trains on the clean and the restyled copy of every image.
    adv = cfg.MODEL.ADVSTYLE = CN()
    adv.ENABLED = False
    adv.LR = 1.0
    adv.STEPS = 1


def add_peft_config(cfg: CN) -> None:
    """MODEL.PEFT: the PEFT baselines of the paper's Table 4 that MODEL.REIN.NAME selects instead of Rein,
    with their papers' settings (rein_d2/modeling/peft_methods/)."""
    peft = cfg.MODEL.PEFT = CN()
    # "LoRA": low-rank updates of every block's projections named in LORA_PROJECTIONS ("query", "key",
    # "value"), alpha / rank their scale (alpha: the `peft` library's default lora_alpha).
    peft.LORA_PROJECTIONS = ["query", "value"]
    peft.LORA_RANK = 8
    peft.LORA_ALPHA = 8.0
    peft.LORA_DROPOUT = 0.1
    # "AdaptFormer": a bottleneck adapter parallel to every block's MLP, fixed output scale, dropout
    # after its ReLU, no LayerNorm (the official image settings).
    peft.ADAPTFORMER_BOTTLENECK = 64
    peft.ADAPTFORMER_SCALE = 0.1
    peft.ADAPTFORMER_DROPOUT = 0.1
    # "VPT": VPT-deep, this many prompt tokens in every block's input; dropout on them (official 0.0).
    peft.VPT_TOKENS = 150
    peft.VPT_DROPOUT = 0.0


def add_rein_config(cfg: CN) -> None:
    """All keys rein-d2 adds to Detectron2's defaults."""
    add_maskformer2_config(cfg)
    add_vit_config(cfg)
    add_cnn_config(cfg)
    add_peft_config(cfg)
    add_dgss_augmentation_config(cfg)
    rein = cfg.MODEL.REIN = CN()
    rein.NAME = "LoRAReins"  # a class registered in PEFT_REGISTRY
    rein.TOKEN_LENGTH = 100
    rein.LORA_DIM = 16
    rein.LINK_TOKEN_TO_QUERY = True
    rein.SCALE_INIT = 1e-3
    rein.ZERO_MLP_DELTA_F = False
    rein.USE_SOFTMAX = True
    # One mlp_token2feat, mlp_delta_f and transform for all layers (official); False: one per
    # layer, the "Rein-core" rows of the paper's Table 6.
    rein.SHARE_LAYERS = True

    # Official Rein optimiser: AdamW, no decay on these names (norms are matched as well). The
    # official keys match MMSeg's names: its "level_embed" is the decoder's (predictor.level_embed);
    # the pixel decoder's (MMDet's level_encoding, here transformer.level_embed) decays.
    cfg.SOLVER.NO_DECAY_KEYS = ["query_embed", "predictor.level_embed", "learnable_tokens", "reins.scale"]
    cfg.SOLVER.BETAS = [0.9, 0.999]
    cfg.SOLVER.EPS = 1e-8
    cfg.SOLVER.AMP.PRECISION = "float16"  # or "bfloat16" (CUDA or CPU)
    # DDP's search for parameters without gradient (the official Rein sets it).
    cfg.SOLVER.FIND_UNUSED_PARAMETERS = False

    # Dataset files (YAML or JSON, datasets/README.md "Your own dataset") whose splits load_config
    # registers, so that DATASETS.TRAIN / TEST can name them; relative paths from the current directory.
    cfg.DATASETS.FILES = []

    # Test datasets whose scores form the reported mean (the official Rein reports the mean over
    # Cityscapes, BDD100K and Mapillary); empty: all of DATASETS.TEST. Per-domain scores are kept.
    cfg.TEST.MEAN_OVER = []

    cfg.TEST.SLIDE = CN()
    cfg.TEST.SLIDE.ENABLED = True
    cfg.TEST.SLIDE.CROP_SIZE = [512, 512]
    cfg.TEST.SLIDE.STRIDE = [341, 341]
    cfg.TEST.SLIDE.BATCH_SIZE = 4  # crops per forward pass

    # Inference under torch.autocast (MaskFormer in eval mode); the pixel decoder's deformable
    # attention stays in float32, and the returned class scores are float32.
    cfg.TEST.AMP = CN()
    cfg.TEST.AMP.ENABLED = False
    cfg.TEST.AMP.PRECISION = "bfloat16"  # or "float16" (CUDA)


def _unknown_key_message(err: Exception, cfg: CN, source: str) -> str:
    """yacs' unknown-key error as one line naming the key, the source and the closest keys."""
    text = str(err.args[0]) if err.args else str(err)
    match = re.search(r"Non-existent (?:config )?key: (\S+)", text)
    if match is None:
        return f"{source}: {text}"
    key = match[1]
    leaves = [k for k, _ in leaf_items(cfg)]
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, leaves, n=3, cutoff=0.75)
    close += [k for k in leaves if k.rsplit(".", 1)[-1] == leaf and k not in close]
    hint = f"; did you mean {' or '.join(close[:3])}?" if close else "; see rein_d2/config.py for the keys"
    return f"{source}: unknown config key {key}{hint}"


def load_config(config_file: str, opts: list[str] | None = None, *, check: bool = True) -> CN:
    """Detectron2's defaults + rein-d2's keys, then the YAML file (with its _BASE_ files) and
    the KEY VALUE overrides, each error a ConfigError that names the key and where it was set.
    The splits of DATASETS.FILES are registered (in every process that loads the config).

    With `check`, keys set to values that rein-d2 would ignore are refused (config_check.py).
    """
    from detectron2.config import get_cfg

    if not Path(config_file).is_file():
        raise ConfigError(f"config file {config_file} not found (absolute: {Path(config_file).resolve()}); "
                          "pass --config-file with a YAML file, e.g. configs/dinov2/rein_dinov2_large_gta_512.yaml")
    cfg = get_cfg()
    add_rein_config(cfg)
    defaults = cfg.clone()
    for source, merge in ((f"{config_file} (or one of its _BASE_ files)", lambda: cfg.merge_from_file(config_file)),
                          ("command-line override", lambda: cfg.merge_from_list(list(opts or [])))):
        try:
            merge()
        except (KeyError, AssertionError, ValueError, TypeError) as err:
            raise ConfigError(_unknown_key_message(err, defaults, source)) from err
    register_dataset_files(cfg.DATASETS.FILES)
    if check:
        source = f"the config ({config_file}{' with its command-line overrides' if opts else ''})"
        check_honoured(cfg, defaults, source)
        outside = [name for name in cfg.TEST.MEAN_OVER if name not in cfg.DATASETS.TEST]
        if outside:
            raise ConfigError(f"{source}: TEST.MEAN_OVER names {outside}, which are not in DATASETS.TEST "
                              f"{list(cfg.DATASETS.TEST)}; list test datasets only (empty: all of them)")
    return cfg
