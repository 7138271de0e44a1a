"""State-dict compatibility with the official Mask2Former, and its Cityscapes configs.

OFFICIAL_KEYS is written from the official source (facebookresearch/Mask2Former:
maskformer_model.py, criterion.py, meta_arch/mask_former_head.py, pixel_decoder/msdeformattn.py,
pixel_decoder/ops/modules/ms_deform_attn.py, transformer_decoder/mask2former_transformer_decoder.py)
for the small config below, not from this package: a renamed or reshaped parameter fails.
"""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head
from torch import nn

from rein_d2 import add_rein_config
from rein_d2.checkpoint.compact import CompactCheckpointer
from rein_d2.modeling.criterion import SetCriterion
from rein_d2.modeling.meta_arch import MaskFormer
from rein_d2.modeling.transformer_decoder import check_num_classes

K = 5  # classes
C = 32  # SEM_SEG_HEAD.CONVS_DIM
MASK = 40  # SEM_SEG_HEAD.MASK_DIM
H = 48  # MASK_FORMER.HIDDEN_DIM (differs from CONVS_DIM: the predictor gets 1x1 input projections)
HEADS = 4  # MASK_FORMER.NHEADS, used by the decoder and the deformable encoder
FFN = 64  # MASK_FORMER.DIM_FEEDFORWARD (decoder); the encoder's is fixed at 1024
Q = 7  # NUM_OBJECT_QUERIES
CHANNELS = {"res2": 8, "res3": 16, "res4": 24, "res5": 40}
SHAPES = {name: ShapeSpec(channels=c, stride=4 * 2**i) for i, (name, c) in enumerate(CHANNELS.items())}

ENC_LAYER = {  # MSDeformAttnTransformerEncoderLayer, 3 levels, 4 points
    "self_attn.sampling_offsets.weight": (HEADS * 3 * 4 * 2, C),
    "self_attn.sampling_offsets.bias": (HEADS * 3 * 4 * 2,),
    "self_attn.attention_weights.weight": (HEADS * 3 * 4, C), "self_attn.attention_weights.bias": (HEADS * 3 * 4,),
    "self_attn.value_proj.weight": (C, C), "self_attn.value_proj.bias": (C,),
    "self_attn.output_proj.weight": (C, C), "self_attn.output_proj.bias": (C,),
    "norm1.weight": (C,), "norm1.bias": (C,),
    "linear1.weight": (1024, C), "linear1.bias": (1024,), "linear2.weight": (C, 1024), "linear2.bias": (C,),
    "norm2.weight": (C,), "norm2.bias": (C,),
}
ATTENTION = {"in_proj_weight": (3 * H, H), "in_proj_bias": (3 * H,), "out_proj.weight": (H, H), "out_proj.bias": (H,)}
NORM = {"norm.weight": (H,), "norm.bias": (H,)}
FFN_LAYER = {"linear1.weight": (FFN, H), "linear1.bias": (FFN,), "linear2.weight": (H, FFN), "linear2.bias": (H,),
             **NORM}

PIXEL_DECODER = {
    **{f"input_proj.{i}.0.weight": (C, CHANNELS[name], 1, 1) for i, name in enumerate(["res5", "res4", "res3"])},
    **{f"input_proj.{i}.{j}.{p}": (C,) for i in range(3) for j, p in [(0, "bias"), (1, "weight"), (1, "bias")]},
    "transformer.level_embed": (3, C),
    **{f"transformer.encoder.layers.{i}.{k}": s for i in range(2) for k, s in ENC_LAYER.items()},
    "mask_features.weight": (MASK, C, 1, 1), "mask_features.bias": (MASK,),
    "adapter_1.weight": (C, CHANNELS["res2"], 1, 1), "adapter_1.norm.weight": (C,), "adapter_1.norm.bias": (C,),
    "layer_1.weight": (C, C, 3, 3), "layer_1.norm.weight": (C,), "layer_1.norm.bias": (C,),
}
PREDICTOR = {
    **{f"transformer_self_attention_layers.{i}.self_attn.{k}": s for i in range(3) for k, s in ATTENTION.items()},
    **{f"transformer_self_attention_layers.{i}.{k}": s for i in range(3) for k, s in NORM.items()},
    **{f"transformer_cross_attention_layers.{i}.multihead_attn.{k}": s for i in range(3) for k, s in ATTENTION.items()},
    **{f"transformer_cross_attention_layers.{i}.{k}": s for i in range(3) for k, s in NORM.items()},
    **{f"transformer_ffn_layers.{i}.{k}": s for i in range(3) for k, s in FFN_LAYER.items()},
    "decoder_norm.weight": (H,), "decoder_norm.bias": (H,),
    "query_feat.weight": (Q, H), "query_embed.weight": (Q, H), "level_embed.weight": (3, H),
    **{f"input_proj.{i}.{p}": s for i in range(3) for p, s in [("weight", (H, C, 1, 1)), ("bias", (H,))]},
    "class_embed.weight": (K + 1, H), "class_embed.bias": (K + 1,),
    "mask_embed.layers.0.weight": (H, H), "mask_embed.layers.0.bias": (H,),
    "mask_embed.layers.1.weight": (H, H), "mask_embed.layers.1.bias": (H,),
    "mask_embed.layers.2.weight": (MASK, H), "mask_embed.layers.2.bias": (MASK,),
}
OFFICIAL_KEYS = {
    **{f"sem_seg_head.pixel_decoder.{k}": s for k, s in PIXEL_DECODER.items()},
    **{f"sem_seg_head.predictor.{k}": s for k, s in PREDICTOR.items()},
    "criterion.empty_weight": (K + 1,),
}


def small_cfg(link=False, num_classes=K):
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = link
    head = cfg.MODEL.SEM_SEG_HEAD
    head.NAME, head.PIXEL_DECODER_NAME = "MaskFormerHead", "MSDeformAttnPixelDecoder"
    head.NUM_CLASSES, head.CONVS_DIM, head.MASK_DIM, head.NORM = num_classes, C, MASK, "GN"
    head.IN_FEATURES, head.COMMON_STRIDE, head.TRANSFORMER_ENC_LAYERS = list(CHANNELS), 4, 2
    mf = cfg.MODEL.MASK_FORMER
    mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    mf.HIDDEN_DIM, mf.NHEADS, mf.DIM_FEEDFORWARD, mf.NUM_OBJECT_QUERIES, mf.DEC_LAYERS = H, HEADS, FFN, Q, 4  # 3 layers: one per scale
    return cfg


def model_without_backbone(cfg):
    """The configurable constructor with explicit modules; the backbone has no parameters."""
    head = build_sem_seg_head(cfg, SHAPES)
    return MaskFormer(backbone=nn.Identity(), sem_seg_head=head, criterion=SetCriterion(cfg, head.num_classes),
                      num_queries=Q, size_divisibility=32, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)


def random_state(keys):
    return {k: torch.randn(s) for k, s in keys.items()}


def test_keys_and_shapes_equal_the_official_ones():
    state = model_without_backbone(small_cfg()).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == OFFICIAL_KEYS


def test_official_state_dict_loads_strictly():
    model = model_without_backbone(small_cfg())
    official = random_state(OFFICIAL_KEYS)
    model.load_state_dict(official, strict=True)
    torch.testing.assert_close(model.sem_seg_head.predictor.query_embed.weight.data,
                               official["sem_seg_head.predictor.query_embed.weight"])


def test_rein_link_swaps_the_learned_queries_for_querys2feat():
    """As the official Rein head with replace_query_feat=True: no query_feat / query_embed."""
    keys = {k: s for k, s in OFFICIAL_KEYS.items() if not k.endswith(("query_feat.weight", "query_embed.weight"))}
    keys["sem_seg_head.predictor.querys2feat.weight"] = (H, H)
    keys["sem_seg_head.predictor.querys2feat.bias"] = (H,)
    model = model_without_backbone(small_cfg(link=True))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    model.load_state_dict(random_state(keys), strict=True)


def test_num_classes_mismatch_names_both_numbers():
    model = model_without_backbone(small_cfg(num_classes=19))
    with pytest.raises(ValueError, match=r"for 5 classes.*NUM_CLASSES is 19"):
        model.load_state_dict(random_state(OFFICIAL_KEYS), strict=True)
    state = random_state(OFFICIAL_KEYS)
    with pytest.raises(ValueError, match=r"for 5 classes.*NUM_CLASSES is 19"):
        check_num_classes(state, 19, prefix="sem_seg_head.predictor.")
    check_num_classes(state, K, prefix="sem_seg_head.predictor.")


def test_num_classes_mismatch_is_named_when_loading_a_checkpoint_file(tmp_path):
    torch.save({"model": random_state(OFFICIAL_KEYS)}, tmp_path / "official.pth")
    model = model_without_backbone(small_cfg(num_classes=19))
    with pytest.raises(ValueError, match=r"for 5 classes.*NUM_CLASSES is 19"):
        CompactCheckpointer(model).load(str(tmp_path / "official.pth"))


OFFICIAL_CITYSCAPES_BASE = """
MODEL:
  BACKBONE:
    FREEZE_AT: 0
    NAME: "build_resnet_backbone"
  WEIGHTS: "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STEM_TYPE: "basic"
    STEM_OUT_CHANNELS: 64
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
    NORM: "SyncBN"
    RES5_MULTI_GRID: [1, 1, 1]
DATASETS:
  TRAIN: ("cityscapes_fine_sem_seg_train",)
  TEST: ("cityscapes_fine_sem_seg_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.0001
  MAX_ITER: 90000
  WARMUP_FACTOR: 1.0
  WARMUP_ITERS: 0
  WEIGHT_DECAY: 0.05
  OPTIMIZER: "ADAMW"
  LR_SCHEDULER_NAME: "WarmupPolyLR"
  BACKBONE_MULTIPLIER: 0.1
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_TYPE: "full_model"
    CLIP_VALUE: 0.01
    NORM_TYPE: 2.0
  AMP:
    ENABLED: True
INPUT:
  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 1024) for x in range(5, 21)]"]
  MIN_SIZE_TRAIN_SAMPLING: "choice"
  MIN_SIZE_TEST: 1024
  MAX_SIZE_TRAIN: 4096
  MAX_SIZE_TEST: 2048
  CROP:
    ENABLED: True
    TYPE: "absolute"
    SIZE: (512, 1024)
    SINGLE_CATEGORY_MAX_AREA: 1.0
  COLOR_AUG_SSD: True
  SIZE_DIVISIBILITY: -1
  FORMAT: "RGB"
  DATASET_MAPPER_NAME: "mask_former_semantic"
TEST:
  EVAL_PERIOD: 5000
  AUG:
    ENABLED: False
    MIN_SIZES: [512, 768, 1024, 1280, 1536, 1792]
    MAX_SIZE: 4096
    FLIP: True
DATALOADER:
  FILTER_EMPTY_ANNOTATIONS: True
  NUM_WORKERS: 4
VERSION: 2
"""
OFFICIAL_CITYSCAPES_R50 = """
_BASE_: Base-Cityscapes-SemanticSegmentation.yaml
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  SEM_SEG_HEAD:
    NAME: "MaskFormerHead"
    IGNORE_VALUE: 255
    NUM_CLASSES: 19
    LOSS_WEIGHT: 1.0
    CONVS_DIM: 256
    MASK_DIM: 256
    NORM: "GN"
    PIXEL_DECODER_NAME: "MSDeformAttnPixelDecoder"
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
    DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: ["res3", "res4", "res5"]
    COMMON_STRIDE: 4
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    DEEP_SUPERVISION: True
    NO_OBJECT_WEIGHT: 0.1
    CLASS_WEIGHT: 2.0
    MASK_WEIGHT: 5.0
    DICE_WEIGHT: 5.0
    HIDDEN_DIM: 256
    NUM_OBJECT_QUERIES: 100
    NHEADS: 8
    DROPOUT: 0.0
    DIM_FEEDFORWARD: 2048
    ENC_LAYERS: 0
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
    DEC_LAYERS: 10
    TRAIN_NUM_POINTS: 12544
    OVERSAMPLE_RATIO: 3.0
    IMPORTANCE_SAMPLE_RATIO: 0.75
    TEST:
      SEMANTIC_ON: True
      INSTANCE_ON: False
      PANOPTIC_ON: False
      OVERLAP_THRESHOLD: 0.8
      OBJECT_MASK_THRESHOLD: 0.8
"""
OFFICIAL_CITYSCAPES_SWIN_L = """
_BASE_: ../maskformer2_R50_bs16_90k.yaml
MODEL:
  BACKBONE:
    NAME: "D2SwinTransformer"
  SWIN:
    EMBED_DIM: 192
    DEPTHS: [2, 2, 18, 2]
    NUM_HEADS: [6, 12, 24, 48]
    WINDOW_SIZE: 12
    APE: False
    DROP_PATH_RATE: 0.3
    PATCH_NORM: True
    PRETRAIN_IMG_SIZE: 384
  WEIGHTS: "swin_large_patch4_window12_384_22k.pkl"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  MASK_FORMER:
    NUM_OBJECT_QUERIES: 100
"""


def test_official_cityscapes_configs_parse_and_build_the_official_head(tmp_path):
    (tmp_path / "swin").mkdir()
    (tmp_path / "Base-Cityscapes-SemanticSegmentation.yaml").write_text(OFFICIAL_CITYSCAPES_BASE)
    (tmp_path / "maskformer2_R50_bs16_90k.yaml").write_text(OFFICIAL_CITYSCAPES_R50)
    (tmp_path / "swin" / "maskformer2_swin_large_IN21k_384_bs16_90k.yaml").write_text(OFFICIAL_CITYSCAPES_SWIN_L)
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(str(tmp_path / "swin" / "maskformer2_swin_large_IN21k_384_bs16_90k.yaml"))
    assert cfg.MODEL.SWIN.EMBED_DIM == 192 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    cfg.MODEL.REIN.LINK_TOKEN_TO_QUERY = False
    r50 = {f"res{i + 2}": ShapeSpec(channels=256 * 2**i, stride=4 * 2**i) for i in range(4)}
    head = build_sem_seg_head(cfg, r50)
    state = head.state_dict()
    assert len(head.predictor.transformer_self_attention_layers) == 9
    assert len(head.pixel_decoder.transformer.encoder.layers) == 6
    assert state["predictor.class_embed.weight"].shape == (20, 256)
    assert state["pixel_decoder.input_proj.0.0.weight"].shape == (256, 2048, 1, 1)
    assert state["pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight"].shape == (192, 256)
    assert state["pixel_decoder.transformer.encoder.layers.0.linear1.weight"].shape == (1024, 256)
    assert state["predictor.transformer_ffn_layers.8.linear1.weight"].shape == (2048, 256)
