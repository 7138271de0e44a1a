"""Optimizer and learning-rate schedule of the official Rein recipe, in Detectron2 form.

Parameter groups follow the official PEFT optimizer constructor: AdamW over trainable
parameters only; no weight decay on normalisation layers (by type, and any parameter
whose name contains "norm"), nor on names containing SOLVER.NO_DECAY_KEYS (query and
level embeddings, Rein tokens and scale); every other tensor, biases included, decays.
The VFM's own weights (trained only in Full mode) get SOLVER.BACKBONE_MULTIPLIER.
The schedule is linear warmup from SOLVER.WARMUP_FACTOR over SOLVER.WARMUP_ITERS, then
polynomial decay over the remaining iterations, as MMEngine's LinearLR + PolyLR chain.
"""
from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from detectron2.solver.lr_scheduler import LRMultiplier
from detectron2.projects.deeplab import build_lr_scheduler as deeplab_build_lr_scheduler
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
)
from torch import nn

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
VFM_PREFIX = "backbone.vit."
REIN_SCHEDULER = "WarmupThenPolyLR"


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, no_decay_keys: list[str],
                 backbone_multiplier: float = 1.0, vfm_prefix: str = VFM_PREFIX) -> list[dict]:
    """One group per distinct (lr, weight decay), trainable parameters only."""
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            no_decay = isinstance(module, NORM_TYPES) or any(k in full_name for k in ("norm", *no_decay_keys))
            lr = base_lr * (backbone_multiplier if full_name.startswith(vfm_prefix) else 1.0)
            groups.append({"params": [param], "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay})
    return reduce_param_groups(groups)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    s = cfg.SOLVER
    if s.OPTIMIZER != "ADAMW":
        raise ValueError(f"SOLVER.OPTIMIZER={s.OPTIMIZER!r}: rein-d2 trains with the official 'ADAMW'")
    groups = param_groups(model, s.BASE_LR, s.WEIGHT_DECAY, list(s.NO_DECAY_KEYS), s.BACKBONE_MULTIPLIER)
    if not groups:
        raise ValueError("the model has no trainable parameter: check MODEL.VIT.FINETUNE")
    optimizer_cls = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
    return optimizer_cls(groups, lr=s.BASE_LR, betas=tuple(s.BETAS), eps=s.EPS, weight_decay=s.WEIGHT_DECAY)


def warmup_then_poly(max_iter: int, warmup_iters: int, warmup_factor: float, power: float) -> ParamScheduler:
    """LR multiplier: warmup_factor -> 1 linearly over warmup_iters, then (1 - t/T)^power to 0."""
    if not 0 <= warmup_iters < max_iter:
        raise ValueError(f"SOLVER.WARMUP_ITERS={warmup_iters} must lie in [0, SOLVER.MAX_ITER={max_iter})")
    poly = PolynomialDecayParamScheduler(1.0, power)
    if warmup_iters == 0:
        return poly
    warm = warmup_iters / max_iter
    return CompositeParamScheduler([LinearParamScheduler(warmup_factor, 1.0), poly], lengths=[warm, 1.0 - warm],
                                   interval_scaling=["rescaled", "rescaled"])


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != REIN_SCHEDULER:
        return deeplab_build_lr_scheduler(cfg, optimizer)  # Detectron2's and Mask2Former's WarmupPolyLR
    multiplier = warmup_then_poly(s.MAX_ITER, s.WARMUP_ITERS, s.WARMUP_FACTOR, s.POLY_LR_POWER)
    return LRMultiplier(optimizer, multiplier, s.MAX_ITER)
