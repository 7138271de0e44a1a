"""Rein on convolutional backbones (the paper's Table 8): ResNet V1c and ConvNeXt, built by timm.

As the official `ReinsResNetV1c` / `ReinsConvNeXt` do, every stage gets its own refinement,
as wide as the stage and with one layer per residual block; after every block the feature map
is flattened to tokens, refined and put back. Each stage's output (ConvNeXt: after its own
LayerNorm, MMPretrain's `norm<i>`) is one of res2..res5, and the stages' queries are summed
for the Mask2Former link. BatchNorm statistics are never updated (the model stays in eval mode
in every fine-tune mode; `full` trains their affine weights), as detectron2's frozen BN.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import timm
from detectron2.config import CfgNode, configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ...checkpoint.cnn_weights import official_cnn_to_timm
from ...checkpoint.vfm_weights import IncompatibleWeightsError, load_tensors, read_state_dict
from ...errors import ConfigError
from ..rein import REIN_QUERIES_KEY
from .peft import build_peft, needs_block_internals
from .vit import FINETUNE_MODES, OUT_FEATURES, trains_backbone

logger = logging.getLogger(__name__)

# The refinement's token initialisation bound reads a patch size; the official CNN configs give 16.
CNN_PATCH_SIZE = 16


@dataclass
class Stages:
    """A CNN as four stages: what runs before each stage's blocks, the blocks, the output norm."""

    entries: nn.ModuleList
    blocks: nn.ModuleList
    out_norms: nn.ModuleList
    widths: list[int]
    strides: list[int]


def split_stages(cnn: nn.Module) -> Stages:
    """The stages of a timm ResNet or ConvNeXt. ConvNeXt's classifier head goes (its norm is
    the last stage's output norm, which `out_norms` holds instead)."""
    info = [f for f in cnn.feature_info if f["module"] != "act1"]  # ResNet lists its stem too
    widths, strides = [f["num_chs"] for f in info], [f["reduction"] for f in info]
    if isinstance(cnn, timm.models.ResNet):
        stem = nn.Sequential(cnn.conv1, cnn.bn1, cnn.act1, cnn.maxpool)
        entries = [stem, nn.Identity(), nn.Identity(), nn.Identity()]
        blocks = [cnn.layer1, cnn.layer2, cnn.layer3, cnn.layer4]
        out_norms = [nn.Identity() for _ in blocks]
    elif isinstance(cnn, timm.models.ConvNeXt):
        entries = [nn.Sequential(cnn.stem, cnn.stages[0].downsample)] + [s.downsample for s in cnn.stages[1:]]
        blocks = [s.blocks for s in cnn.stages]
        out_norms = [LayerNorm2d(w) for w in widths]
    else:
        raise ConfigError(f"MODEL.CNN.TIMM_NAME: {type(cnn).__name__} is not a ResNet or ConvNeXt; "
                          "ReinCNN knows the stages of those two families")
    return Stages(nn.ModuleList(entries), nn.ModuleList(blocks), nn.ModuleList(out_norms), widths, strides)


def cnn_state_to_stages(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(timm model tensors, out_norms tensors): timm's `head.norm` is the last stage's norm."""
    norms = {k.removeprefix("out_norms."): v for k, v in state.items() if k.startswith("out_norms.")}
    norms |= {"3." + k.removeprefix("head.norm."): v for k, v in state.items() if k.startswith("head.norm.")}
    rest = {k: v for k, v in state.items() if not k.startswith(("out_norms.", "head."))}
    return rest, norms


class ReinCNN(Backbone):
    """A timm ResNet / ConvNeXt whose stages are refined after every block (one Rein per stage)."""

    @configurable
    def __init__(self, stages: Stages, finetune: str = "rein", reins: list[nn.Module] | None = None) -> None:
        super().__init__()
        train_cnn = trains_backbone(finetune, reins is not None, "MODEL.CNN.FINETUNE")
        self.entries, self.blocks, self.out_norms = stages.entries, stages.blocks, stages.out_norms
        self.finetune = finetune
        self.requires_grad_(train_cnn)
        self.reins = nn.ModuleList(reins) if reins is not None else None
        if self.reins is not None:
            if any(needs_block_internals(rein) for rein in self.reins):
                raise ConfigError(f"{type(self.reins[0]).__name__} needs a ViT's blocks (their input tokens or "
                                  "sub-modules); ReinCNN refines block outputs only: use MODEL.BACKBONE.NAME ReinViT")
            for stage, (blocks, rein) in enumerate(zip(self.blocks, self.reins)):
                if getattr(rein, "num_layers", len(blocks)) != len(blocks):
                    raise ConfigError(f"stage {stage} has {len(blocks)} blocks but its refinement {rein.num_layers} layers")
                for layer, block in enumerate(blocks):
                    block.register_forward_hook(functools.partial(self._refine_block_output, rein, layer))
        self._shapes = {name: ShapeSpec(channels=w, stride=s)
                        for name, w, s in zip(OUT_FEATURES, stages.widths, stages.strides)}
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        logger.info("ReinCNN (fine-tune %r): %s trainable of %s parameters (%.2f%%)", finetune,
                    f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1))

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | None = None) -> dict:
        c = cfg.MODEL.CNN
        try:
            cnn = timm.create_model(c.TIMM_NAME, pretrained=False, num_classes=0, drop_path_rate=c.DROP_PATH_RATE)
        except RuntimeError as err:
            raise ConfigError(f"MODEL.CNN.TIMM_NAME={c.TIMM_NAME!r} is not a timm model; e.g. resnet50c, "
                              "resnet101c (ResNet V1c) or convnext_large") from err
        stages = split_stages(cnn)
        if c.WEIGHTS:
            load_cnn_weights(cnn, stages, c.WEIGHTS)
        attach_peft, _ = FINETUNE_MODES.get(c.FINETUNE, (False, False))
        reins = ([build_peft(cfg, len(blocks), width, CNN_PATCH_SIZE) for blocks, width in zip(stages.blocks, stages.widths)]
                 if attach_peft else None)
        return dict(stages=stages, finetune=c.FINETUNE, reins=reins)

    @property
    def size_divisibility(self) -> int:
        return 32

    def train(self, mode: bool = True) -> "ReinCNN":
        """The CNN stays in eval mode (BatchNorm statistics, drop-path); only the refinement trains."""
        super().train(mode)
        for module in (self.entries, self.blocks, self.out_norms):
            module.eval()
        return self

    @staticmethod
    def _refine_block_output(rein: nn.Module, layer: int, block: nn.Module, args: tuple, output: Tensor) -> Tensor:
        b, c, h, w = output.shape
        tokens = output.flatten(2).transpose(1, 2)
        return rein(tokens, layer).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = {}
        for name, entry, blocks, norm in zip(OUT_FEATURES, self.entries, self.blocks, self.out_norms):
            x = blocks(entry(x))
            features[name] = norm(x).contiguous()
        if self.reins is not None:
            queries = [q for q in (rein.queries() for rein in self.reins) if q is not None]
            if queries:
                features[REIN_QUERIES_KEY] = sum(queries)
        return features

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)


def load_cnn_weights(cnn: nn.Module, stages: Stages, path: str) -> None:
    """Weights into the timm CNN and its stage norms: timm files or the official MMSeg / MMPretrain
    releases (cnn_weights.py renames theirs). Stage norms a file lacks (a classification
    checkpoint has the last one only) stay at their initialisation, as in the official code."""
    key = "MODEL.CNN.WEIGHTS"
    state, norms = cnn_state_to_stages(official_cnn_to_timm(read_state_dict(path, key)))
    load_tensors(cnn, state, path, key)
    if isinstance(stages.out_norms[0], nn.Identity):
        if norms:
            raise IncompatibleWeightsError(f"{key}: {path} has stage norms (ConvNeXt's) but this CNN has none")
        return
    try:
        result = stages.out_norms.load_state_dict(norms, strict=False)
    except RuntimeError as err:  # a shape mismatch
        raise IncompatibleWeightsError(f"{key}: the stage norms of {path} do not fit: {err}") from err
    if result.unexpected_keys:
        raise IncompatibleWeightsError(f"{key}: {path} has stage norms this CNN lacks: {result.unexpected_keys}")
    kept = sorted({int(k.split(".")[0]) for k in result.missing_keys})
    if kept:
        logger.info("%s: stage norms %s are not in %s and keep their initialisation", key, kept, path)


BACKBONE_REGISTRY.register(ReinCNN)
