"""Optimizer and learning-rate schedule of the official Rein recipe, in Detectron2 form.

Parameter groups follow the official PEFT optimizer constructor: AdamW over trainable
parameters only; normalisation layers (by type, and any parameter whose name contains
"norm") decay by SOLVER.WEIGHT_DECAY_NORM (0, as the official), names containing
SOLVER.NO_DECAY_KEYS (query and level embeddings, Rein tokens and scale) do not decay;
every other tensor decays, biases included (by SOLVER.WEIGHT_DECAY_BIAS when set, their
learning rate times SOLVER.BIAS_LR_FACTOR, both Detectron2 keys whose defaults change
nothing). The VFM's own weights (trained only in Full mode) get SOLVER.BACKBONE_MULTIPLIER.
The official keys are matched against MMSeg's parameter names, so rein-d2's keys name what
they matched there: "predictor.level_embed" is the decoder's `level_embed`, while the pixel
decoder's `transformer.level_embed` (MMDet's `level_encoding`) decays, as in the official run.
The groups are logged when the optimizer is built: tensors, parameters, lr and weight decay.
The schedule is linear warmup from SOLVER.WARMUP_FACTOR over SOLVER.WARMUP_ITERS, then
polynomial decay over the remaining iterations, iteration for iteration MMEngine's LinearLR +
PolyLR chain (which ends at 0 on the last iteration).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build_lr_scheduler
from fvcore.common.param_scheduler import ParamScheduler
from tabulate import tabulate
from torch import nn

from .errors import ConfigError

logger = logging.getLogger(__name__)

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
# The foundation model's own parameters, which SOLVER.BACKBONE_MULTIPLIER scales: ReinViT's ViT,
# the same under an FPN, and ReinCNN's stems, blocks and stage norms (not Rein's, not the FPN's).
VFM_PREFIXES = ("backbone.vit.", "backbone.bottom_up.vit.", "backbone.entries.", "backbone.blocks.",
                "backbone.out_norms.")
REIN_SCHEDULER = "WarmupThenPolyLR"
NAMES_SHOWN = 3  # tensor names the parameter-group report shows per group


@dataclass(frozen=True)
class DecayRules:
    """Weight decay and learning-rate factors by kind of parameter (see the module docstring)."""

    weight_decay: float
    no_decay_keys: tuple[str, ...] = ()
    weight_decay_norm: float = 0.0
    weight_decay_bias: float | None = None
    bias_lr_factor: float = 1.0
    backbone_multiplier: float = 1.0

    def for_param(self, full_name: str, module: nn.Module, base_lr: float) -> dict:
        is_bias = full_name.endswith(".bias") or full_name == "bias"
        if isinstance(module, NORM_TYPES) or "norm" in full_name:
            decay = self.weight_decay_norm
        elif any(k in full_name for k in self.no_decay_keys):
            decay = 0.0
        elif is_bias and self.weight_decay_bias is not None:
            decay = self.weight_decay_bias
        else:
            decay = self.weight_decay
        lr = base_lr * (self.backbone_multiplier if full_name.startswith(VFM_PREFIXES) else 1.0)
        return {"lr": lr * (self.bias_lr_factor if is_bias else 1.0), "weight_decay": decay}


def param_groups(model: nn.Module, base_lr: float, rules: DecayRules) -> list[dict]:
    """One group per distinct (lr, weight decay), trainable parameters only."""
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            groups.append({"params": [param], **rules.for_param(full_name, module, base_lr)})
    return reduce_param_groups(groups)


def param_group_report(groups: list[dict], names: dict[int, str]) -> str:
    """A table with one row per group: lr, weight decay, tensor and parameter counts, first tensor names."""
    rows = []
    for group in groups:
        params = group["params"]
        shown = ", ".join(names[id(p)] for p in params[:NAMES_SHOWN])
        more = f", ... ({len(params) - NAMES_SHOWN} more)" if len(params) > NAMES_SHOWN else ""
        rows.append([f"{group['lr']:g}", f"{group['weight_decay']:g}", len(params),
                     f"{sum(p.numel() for p in params):,}", shown + more])
    table = tabulate(rows, headers=["lr", "weight decay", "tensors", "parameters", "tensors (first)"],
                     tablefmt="pipe", disable_numparse=True)
    return f"Optimizer parameter groups ({len(groups)}):\n{table}"


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    if s.OPTIMIZER != "ADAMW":
        raise ConfigError(f"SOLVER.OPTIMIZER={s.OPTIMIZER!r}: rein-d2 trains with the official 'ADAMW'")
    rules = DecayRules(s.WEIGHT_DECAY, tuple(s.NO_DECAY_KEYS), s.WEIGHT_DECAY_NORM, s.WEIGHT_DECAY_BIAS,
                       s.BIAS_LR_FACTOR, s.BACKBONE_MULTIPLIER)
    groups = param_groups(model, s.BASE_LR, rules)
    if not groups:
        raise ConfigError("the model has no trainable parameter: check MODEL.VIT.FINETUNE")
    logger.info(param_group_report(groups, {id(p): n for n, p in model.named_parameters()}))
    optimizer_cls = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_cls(groups, lr=s.BASE_LR, betas=tuple(s.BETAS), eps=s.EPS, weight_decay=s.WEIGHT_DECAY)


class WarmupThenPoly(ParamScheduler):
    """LR multiplier per iteration t of MMEngine's LinearLR(warmup_factor, begin=0, end=W) followed by
    PolyLR(eta_min=0, begin=W, end=T), the official schedule, as MMEngine computes it: each scheduler
    spans end - begin - 1 steps, so the warmup reaches 1 at t = W - 1, the poly part starts from the
    warmup's last value at t = W and reaches 0 at the last iteration, t = T - 1.
    """

    def __init__(self, max_iter: int, warmup_iters: int, warmup_factor: float, power: float) -> None:
        if not 0 <= warmup_iters < max_iter:
            raise ConfigError(f"SOLVER.WARMUP_ITERS={warmup_iters} must lie in [0, SOLVER.MAX_ITER={max_iter})")
        self.max_iter, self.warmup_iters, self.warmup_factor, self.power = max_iter, warmup_iters, warmup_factor, power

    def _warmup(self, it: int) -> float:
        span = self.warmup_iters - 1
        return self.warmup_factor + (1.0 - self.warmup_factor) * (it / span if span else 0.0)

    def at_iteration(self, it: int) -> float:
        if it < self.warmup_iters:
            return self._warmup(it)
        peak = self._warmup(self.warmup_iters - 1) if self.warmup_iters else 1.0
        span = self.max_iter - self.warmup_iters - 1
        done = min(it - self.warmup_iters, span) / span if span else 0.0
        return peak * (1.0 - done) ** self.power

    def __call__(self, where: float) -> float:
        return self.at_iteration(round(where * self.max_iter))  # LRMultiplier passes iteration / max_iter


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != REIN_SCHEDULER:
        return deeplab_build_lr_scheduler(cfg, optimizer)  # Detectron2's and Mask2Former's WarmupPolyLR
    multiplier = WarmupThenPoly(s.MAX_ITER, s.WARMUP_ITERS, s.WARMUP_FACTOR, s.POLY_LR_POWER)
    return LRMultiplier(optimizer, multiplier, s.MAX_ITER)
