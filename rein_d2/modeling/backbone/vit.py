"""One Detectron2 backbone for every timm vision foundation model, with Rein (or another PEFT method) attached.

Rein is attached by a forward hook on each block, so the same wrapper serves DINOv2
(prefix tokens), EVA02 (rotary embeddings), CLIP, MAE and SAM (windowed NHWC blocks):
whatever a block's forward looks like, its output's patch tokens are refined and handed
to the next block. Other methods use the rest of the interface of `peft.py`, offered for every
method alike: a pre-hook on each block hands its input tokens to `before_block` (VPT's prompts),
and `attach` gets the blocks once to hook into their sub-modules (LoRA, AdaptFormer). Features
follow the official DINOv2 wrapper: blocks OUT_INDICES as maps on the patch grid, resized x4, x2,
x1, x0.5 into res2..res5.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from timm.layers import use_reentrant_ckpt
from torch import Tensor, nn

from ...checkpoint.vfm_weights import load_vfm_weights
from ...errors import ConfigError
from ..rein import REIN_QUERIES_KEY
from .peft import build_peft
from .pos_embed import use_official_pos_embed

logger = logging.getLogger(__name__)

OUT_FEATURES = ("res2", "res3", "res4", "res5")
# Resize of each selected block's patch-grid map, and the nominal stride it is given
# (exact for patch 16; the decoder only needs the x2 ratios between levels).
FEATURE_SCALES = (4.0, 2.0, 1.0, 0.5)
NOMINAL_STRIDES = (4, 8, 16, 32)
# Fine-tune modes: (attach the refinement, train the VFM's own weights).
FINETUNE_MODES = {"rein": (True, False), "freeze": (False, False), "full": (False, True)}


def trains_backbone(finetune: str, has_refinement: bool, config_key: str) -> bool:
    """Whether fine-tune mode `finetune` trains the backbone's own weights; refuses an unknown
    mode, or a refinement module given to a mode without one (or missing from "rein")."""
    if finetune not in FINETUNE_MODES:
        raise ConfigError(f"{config_key}={finetune!r}; choose one of {sorted(FINETUNE_MODES)}")
    attach_peft, train_backbone = FINETUNE_MODES[finetune]
    if attach_peft != has_refinement:
        raise ConfigError(f"fine-tune mode {finetune!r} {'needs' if attach_peft else 'takes no'} refinement module")
    return train_backbone


def create_timm_vfm(
    timm_name: str,
    patch_size: int,
    img_size: int,
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = True,
    **overrides: int,
) -> nn.Module:
    """Build a timm VFM with random weights, without a classifier head.

    `overrides` (embed_dim, depth, num_heads) shrink or change the architecture; pass
    only the ones to change. Position grids are resampled off the native grid as the
    family's official code does (`pos_embed.use_official_pos_embed`).
    """
    kwargs = dict(pretrained=False, num_classes=0, patch_size=patch_size, img_size=img_size,
                  drop_path_rate=drop_path_rate, **overrides)
    if dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    try:
        model = timm.create_model(timm_name, **kwargs)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        raise ConfigError(f"MODEL.VIT.TIMM_NAME={timm_name!r} is not a model of the installed timm "
                          f"{timm.__version__}; list them with `timm.list_models('*dinov2*')`, or upgrade timm "
                          "for models it added later (DINOv3, Perception Encoder, RADIO)") from err
    return use_official_pos_embed(model, timm_name)


def enable_grad_checkpointing(vit: nn.Module) -> None:
    """timm's per-block activation checkpointing. The block's forward hooks (Rein) run inside the
    checkpointed call, so the recomputation applies them again. It must be the non-reentrant
    variant: the reentrant one drops the gradients of parameters (the first block's Rein) when
    no input of the checkpointed call requires grad, as with a frozen patch embedding."""
    if use_reentrant_ckpt():
        raise ConfigError("MODEL.VIT.GRAD_CHECKPOINT needs timm's non-reentrant checkpointing, but "
                         "TIMM_REENTRANT_CKPT is set: unset it (reentrant checkpoints lose Rein's gradients)")
    vit.set_grad_checkpointing(True)


def compile_blocks(vit: nn.Module, backend: str) -> None:
    """torch.compile each block's forward, not its call: the forward hooks (Rein and its
    weights-only cache, which reads parameter versions) stay eager and outside the graph,
    and identical blocks reuse one compiled graph."""
    for block in vit.blocks:
        block.forward = torch.compile(block.forward, backend=backend)


class ReinViT(Backbone):
    """A timm ViT refined by `peft` (Rein, or another method of PEFT_REGISTRY) in every block."""

    @configurable
    def __init__(self, vit: nn.Module, patch_size: int, out_indices: list[int], finetune: str = "rein",
                 peft: nn.Module | None = None, grad_checkpoint: bool = False, compile_backend: str = "") -> None:
        """grad_checkpoint: recompute each block's activations (and its Rein) in the backward pass.
        compile_backend: torch.compile backend for the blocks' forward, "" for eager."""
        super().__init__()
        train_vit = trains_backbone(finetune, peft is not None, "MODEL.VIT.FINETUNE")
        depth = len(vit.blocks)
        increasing = all(a < b for a, b in zip(out_indices, out_indices[1:]))
        if len(out_indices) != len(OUT_FEATURES) or not increasing or not 0 <= out_indices[0] <= out_indices[-1] < depth:
            raise ConfigError(f"MODEL.VIT.OUT_INDICES={list(out_indices)} must be {len(OUT_FEATURES)} increasing "
                             f"block indices in [0, {depth - 1}] for this {depth}-block model")
        # Blocks after the last feature, the final norm (SAM: its neck) and the head are off the
        # forward path: removed, so that no trainable parameter goes without a gradient (DDP).
        vit.prune_intermediate_layers(out_indices, prune_norm=True, prune_head=True)
        refined_layers = getattr(peft, "num_layers", len(vit.blocks))
        if refined_layers != len(vit.blocks):
            raise ConfigError(f"the refinement has {refined_layers} layers but the backbone runs {len(vit.blocks)} "
                              f"blocks (up to MODEL.VIT.OUT_INDICES' last, {out_indices[-1]}); build it for those")
        self.vit = vit
        self.reins = peft
        self.patch_size = patch_size
        self.out_indices = list(out_indices)
        self.finetune = finetune
        self.embed_dim = vit.embed_dim
        self.num_prefix_tokens = getattr(vit, "num_prefix_tokens", 0)
        self.vit.requires_grad_(train_vit)
        if peft is not None:
            self._attach(peft)
        if grad_checkpoint:
            enable_grad_checkpointing(vit)
        if compile_backend:
            compile_blocks(vit, compile_backend)
        self._out_feature_strides = dict(zip(OUT_FEATURES, NOMINAL_STRIDES))
        self._out_feature_channels = {name: self.embed_dim for name in OUT_FEATURES}
        self._out_features = list(OUT_FEATURES)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        logger.info("ReinViT (%s, fine-tune %r): %s trainable of %s parameters (%.2f%%)", type(vit).__name__,
                    finetune, f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1))

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: ShapeSpec | None = None) -> dict:
        v = cfg.MODEL.VIT
        overrides = {k: val for k, val in (("embed_dim", v.EMBED_DIM), ("depth", v.DEPTH),
                                           ("num_heads", v.NUM_HEADS)) if val}
        vit = create_timm_vfm(v.TIMM_NAME, v.PATCH_SIZE, v.IMG_SIZE, v.DROP_PATH_RATE,
                              v.DYNAMIC_IMG_SIZE, **overrides)
        if v.WEIGHTS:
            load_vfm_weights(vit, v.WEIGHTS, config_key="MODEL.VIT.WEIGHTS")
        attach_peft, _ = FINETUNE_MODES.get(v.FINETUNE, (False, False))
        # One layer per block that runs: those up to the last feature block.
        layers = min(len(vit.blocks), max(v.OUT_INDICES) + 1)
        peft = build_peft(cfg, layers, vit.embed_dim, v.PATCH_SIZE) if attach_peft else None
        return dict(vit=vit, patch_size=v.PATCH_SIZE, out_indices=v.OUT_INDICES, finetune=v.FINETUNE, peft=peft,
                    grad_checkpoint=v.GRAD_CHECKPOINT, compile_backend=v.COMPILE)

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    def train(self, mode: bool = True) -> "ReinViT":
        """A frozen VFM stays in eval mode (no drop-path) while the refinement trains."""
        super().train(mode)
        if not FINETUNE_MODES[self.finetune][1]:
            self.vit.eval()
        return self

    def _attach(self, peft: nn.Module) -> None:
        """The hooks of peft.py's interface, for whichever of them the method defines. The block hooks
        look the method up as `self.reins` when they run, so it can be swapped (tools/benchmark.py)."""
        if hasattr(peft, "attach"):
            peft.attach(self.vit.blocks)
        for layer, block in enumerate(self.vit.blocks):
            if hasattr(peft, "before_block"):
                block.register_forward_pre_hook(functools.partial(self._prepare_block_input, layer))
            block.register_forward_hook(functools.partial(self._refine_block_output, layer))

    def _on_tokens(self, step: Callable[..., Tensor], layer: int, x: Tensor) -> Tensor:
        """`step(tokens [B, N, C], layer, num_prefix_tokens)` on a block's input or output; an NHWC map
        (SAM's blocks) as its H * W tokens, which must come back as many."""
        if x.ndim == 4:
            b, h, w, c = x.shape
            tokens = step(x.reshape(b, h * w, c), layer)
            if tokens.shape[1] != h * w:
                raise ConfigError(f"{type(self.reins).__name__} changes the number of tokens at block {layer}, but "
                                  f"{type(self.vit).__name__}'s blocks take NHWC maps (windowed attention), which "
                                  "hold no extra tokens; choose a method that keeps the tokens (Rein, LoRA, AdaptFormer)")
            return tokens.reshape(b, h, w, c)
        return step(x, layer, num_prefix_tokens=self.num_prefix_tokens)

    def _prepare_block_input(self, layer: int, block: nn.Module, args: tuple) -> tuple:
        return (self._on_tokens(self.reins.before_block, layer, args[0]), *args[1:])

    def _refine_block_output(self, layer: int, block: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return self._on_tokens(self.reins, layer, output)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ReinViT: input {h}x{w} is not divisible by the patch size {self.patch_size}; "
                             "pad it first (MaskFormer pads to a multiple of backbone.size_divisibility)")
        maps = self.vit.forward_intermediates(x, indices=self.out_indices, norm=False, stop_early=True,
                                              output_fmt="NCHW", intermediates_only=True)
        features = {
            name: fmap if scale == 1.0 else F.interpolate(fmap, scale_factor=scale, mode="bilinear",
                                                          align_corners=False)
            for name, fmap, scale in zip(OUT_FEATURES, maps, FEATURE_SCALES)
        }
        queries = self.reins.queries() if self.reins is not None else None
        if queries is not None:
            features[REIN_QUERIES_KEY] = queries
        return features

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self.embed_dim, stride=self._out_feature_strides[name])
                for name in OUT_FEATURES}


BACKBONE_REGISTRY.register(ReinViT)
