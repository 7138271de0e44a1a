"""Config keys that rein-d2 accepts (so that official YAML files parse) but would not honour.

Detectron2's defaults and the official Mask2Former keys cover models rein-d2 does not build
(R-CNN heads, Swin, LSJ instance mappers, SGD, step schedules). A key that only configures
one of those is inert; setting it to anything but its default is refused here, with the
reason, rather than silently ignored. Each rule applies only while the component that
would read the key is not in use (e.g. MODEL.RESNETS.* is honoured by a ResNet backbone).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from detectron2.config import CfgNode

from .errors import ConfigError
from .solver import REIN_SCHEDULER

RESNET_BACKBONES = ("build_resnet_backbone", "build_resnet_deeplab_backbone")
FPN_BACKBONES = ("build_rein_vit_fpn_backbone", "build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone")
DEEPLAB_HEADS = ("DeepLabV3PlusHead", "DeepLabV3Head")
SEMANTIC_MAPPER = "mask_former_semantic"
# The meta-architectures rein-d2 trains with its semantic mapper and evaluates on its domains.
SEMANTIC_META_ARCHITECTURES = ("MaskFormer", "SlidingSemanticSegmentor")


def _mask_former(cfg: CfgNode) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "MaskFormer"


def _semantic(cfg: CfgNode) -> bool:
    return cfg.MODEL.META_ARCHITECTURE in SEMANTIC_META_ARCHITECTURES


def _refines_with(cfg: CfgNode, method: str) -> bool:
    """Whether the backbone attaches the refinement `method` (MODEL.REIN.NAME in fine-tune mode "rein")."""
    finetune = cfg.MODEL.CNN.FINETUNE if cfg.MODEL.BACKBONE.NAME == "ReinCNN" else cfg.MODEL.VIT.FINETUNE
    return finetune == "rein" and cfg.MODEL.REIN.NAME == method


@dataclass(frozen=True)
class InertKeys:
    """Keys (full names, or sections ending in '.') that nothing reads while `applies(cfg)`."""

    keys: tuple[str, ...]
    reason: str
    applies: Callable[[CfgNode], bool] = _semantic


def _peft_keys(method: str, *names: str) -> InertKeys:
    """MODEL.PEFT.<name> configure `method` alone."""
    return InertKeys(tuple(f"MODEL.PEFT.{name}" for name in names),
                     f"read only by the {method} refinement (MODEL.REIN.NAME {method!r} with fine-tune mode 'rein')",
                     lambda cfg: not _refines_with(cfg, method))


RULES: tuple[InertKeys, ...] = (
    InertKeys(("INPUT.DATASET_MAPPER_NAME",),
              f"training always uses rein-d2's semantic mapper ({SEMANTIC_MAPPER!r}); instance, "
              "panoptic and LSJ mappers are not implemented"),
    InertKeys(("INPUT.IMAGE_SIZE", "INPUT.MIN_SCALE", "INPUT.MAX_SCALE"),
              "these configure Mask2Former's large-scale-jitter COCO mapper; the semantic mapper "
              "resizes by INPUT.MIN_SIZE_TRAIN / INPUT.MAX_SIZE_TRAIN"),
    InertKeys(("INPUT.MASK_FORMAT",), "instance masks are not used by semantic segmentation"),
    InertKeys(("MODEL.LOAD_PROPOSALS", "MODEL.MASK_ON", "MODEL.KEYPOINT_ON", "VIS_PERIOD",
               "TEST.DETECTIONS_PER_IMAGE", "TEST.KEYPOINT_OKS_SIGMAS", "DATASETS.PROPOSAL_FILES_TRAIN",
               "DATASETS.PROPOSAL_FILES_TEST", "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN",
               "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST"),
              "R-CNN detection options; rein-d2's semantic segmentors do not read them"),
    InertKeys(("MODEL.SWIN.",), "rein-d2 has no Swin backbone (MODEL.BACKBONE.NAME 'D2SwinTransformer')",
              lambda cfg: cfg.MODEL.BACKBONE.NAME != "D2SwinTransformer"),
    InertKeys(("MODEL.CNN.",), "read only by the ReinCNN backbone (MODEL.BACKBONE.NAME 'ReinCNN')",
              lambda cfg: cfg.MODEL.BACKBONE.NAME != "ReinCNN"),
    InertKeys(("MODEL.FPN.",), f"read only by the FPN backbones ({', '.join(FPN_BACKBONES)})",
              lambda cfg: cfg.MODEL.BACKBONE.NAME not in FPN_BACKBONES),
    InertKeys(("MODEL.RESNETS.", "MODEL.BACKBONE.FREEZE_AT"),
              f"read only by Detectron2's ResNet backbones ({', '.join(RESNET_BACKBONES)})",
              lambda cfg: cfg.MODEL.BACKBONE.NAME not in RESNET_BACKBONES),
    InertKeys(("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES",
               "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS",
               "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT",
               "MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV"),
              f"DeepLab head options, read only by {', '.join(DEEPLAB_HEADS)}",
              lambda cfg: cfg.MODEL.SEM_SEG_HEAD.NAME not in DEEPLAB_HEADS),
    InertKeys(("MODEL.SEM_SEG_HEAD.LOSS_WEIGHT",),
              "the Mask2Former losses are weighted by MODEL.MASK_FORMER.CLASS_WEIGHT / MASK_WEIGHT / "
              "DICE_WEIGHT (the official Mask2Former stores this key and never uses it either)", _mask_former),
    InertKeys(("MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS",),
              "the deformable encoder has MODEL.MASK_FORMER.NHEADS heads, as in the official Mask2Former",
              _mask_former),
    InertKeys(("MODEL.SEM_SEG_HEAD.DEFORM_ATTN_COMPILE",),
              "read only by Mask2Former's pixel decoder (MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME "
              "'MSDeformAttnPixelDecoder' in a MaskFormer)",
              lambda cfg: not (_mask_former(cfg) and cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME == "MSDeformAttnPixelDecoder")),
    InertKeys(("MODEL.MASK_FORMER.ENC_LAYERS",),
              "the pixel decoder's encoder depth is MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", _mask_former),
    InertKeys(("SOLVER.WEIGHT_DECAY_EMBED",),
              "as in the official Rein, parameters named in SOLVER.NO_DECAY_KEYS (query and level "
              "embeddings, Rein tokens and scale) have no weight decay: edit that list instead"),
    InertKeys(("SOLVER.MOMENTUM", "SOLVER.NESTEROV"), "SGD options; rein-d2 trains with AdamW (SOLVER.BETAS)"),
    InertKeys(("SOLVER.GAMMA", "SOLVER.STEPS", "SOLVER.NUM_DECAYS", "SOLVER.RESCALE_INTERVAL",
               "SOLVER.BASE_LR_END", "SOLVER.POLY_LR_CONSTANT_ENDING", "SOLVER.WARMUP_METHOD"),
              f"options of other schedules; SOLVER.LR_SCHEDULER_NAME {REIN_SCHEDULER!r} is a linear "
              "warmup then poly(SOLVER.POLY_LR_POWER) to zero",
              lambda cfg: cfg.SOLVER.LR_SCHEDULER_NAME == REIN_SCHEDULER),
    InertKeys(("DATALOADER.REPEAT_THRESHOLD", "DATALOADER.REPEAT_SQRT"),
              "options of RepeatFactorTrainingSampler, which needs instance annotations",
              lambda cfg: cfg.DATALOADER.SAMPLER_TRAIN != "RepeatFactorTrainingSampler"),
    InertKeys(("TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER"),
              "precise BN recomputes BatchNorm statistics, which rein-d2's MaskFormer keeps frozen (ReinCNN) or "
              "has none of", _mask_former),
    InertKeys(("INPUT.PASTA.ALPHA", "INPUT.PASTA.BETA", "INPUT.PASTA.K", "INPUT.PASTA.PROB"),
              "PASTA is off (INPUT.PASTA.ENABLED False)", lambda cfg: not cfg.INPUT.PASTA.ENABLED),
    InertKeys(("INPUT.GTR_LTR.TEXTURE_DIR", "INPUT.GTR_LTR.GLOBAL_PROB", "INPUT.GTR_LTR.LOCAL_PROB",
               "INPUT.GTR_LTR.BLEND", "INPUT.GTR_LTR.LOCAL_AREA"),
              "texture randomisation is off (INPUT.GTR_LTR.ENABLED False)", lambda cfg: not cfg.INPUT.GTR_LTR.ENABLED),
    InertKeys(("MODEL.ADVSTYLE.LR", "MODEL.ADVSTYLE.STEPS"),
              "AdvStyle is off (MODEL.ADVSTYLE.ENABLED False)", lambda cfg: not cfg.MODEL.ADVSTYLE.ENABLED),
    _peft_keys("LoRA", "LORA_PROJECTIONS", "LORA_RANK", "LORA_ALPHA", "LORA_DROPOUT"),
    _peft_keys("AdaptFormer", "ADAPTFORMER_BOTTLENECK", "ADAPTFORMER_SCALE", "ADAPTFORMER_DROPOUT"),
    _peft_keys("VPT", "VPT_TOKENS", "VPT_DROPOUT"),
    InertKeys(("TEST.AUG.MIN_SIZES", "TEST.AUG.MAX_SIZE", "TEST.AUG.FLIP"),
              "test-time augmentation is off (TEST.AUG.ENABLED False)", lambda cfg: not cfg.TEST.AUG.ENABLED),
    InertKeys(("TEST.EXPECTED_RESULTS",),
              "Detectron2's check reads results[task][metric]; multi-domain results are keyed by dataset"),
)

# Values that are refused whatever the rules above say: they select something not built.
REFUSED_VALUES: tuple[tuple[str, object, str], ...] = (
    ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
     "it repeats images by their instance annotations, which semantic records do not have; "
     "use 'TrainingSampler' or 'RandomSubsetTrainingSampler'"),
)


def leaf_items(node: CfgNode, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(full dotted key, value) of every leaf of `node`."""
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from leaf_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _normalise(value: object) -> object:
    """YAML gives lists where Python defaults hold tuples: compare them as equal."""
    return [_normalise(v) for v in value] if isinstance(value, (list, tuple)) else value


def _matches(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def ignored_settings(cfg: CfgNode, defaults: CfgNode) -> list[str]:
    """One line per key that is set away from its default although nothing would read it."""
    default_values, values = dict(leaf_items(defaults)), dict(leaf_items(cfg))
    lines = []
    for key, value in values.items():
        if key not in default_values or _normalise(value) == _normalise(default_values[key]):
            continue
        rule = next((r for r in RULES if _matches(key, r.keys) and r.applies(cfg)), None)
        if rule is not None:
            lines.append(f"  {key} = {value!r} (default {default_values[key]!r}): {rule.reason}")
    for key, value, reason in REFUSED_VALUES:
        if values.get(key) == value:
            lines.append(f"  {key} = {value!r}: {reason}")
    return lines


def check_honoured(cfg: CfgNode, defaults: CfgNode, source: str) -> None:
    """Refuse a config that sets keys rein-d2 would ignore, naming each and why."""
    lines = ignored_settings(cfg, defaults)
    if lines:
        raise ConfigError(f"{source} sets config keys that rein-d2 would ignore:\n" + "\n".join(lines)
                          + "\nRemove them (or set them back to their defaults).")
