"""Pretrain the quickstart's tiny foundation ViT, self-supervised, on a broad synthetic street world.

    python tools/pretrain_foundation.py                      # writes models/tiny_foundation_vit.safetensors
    python tools/pretrain_foundation.py --seed 1 --output my_vit.safetensors --steps 500

A real vision foundation model has seen a broad world and never a segmentation label. This
script makes a tiny one the same way: the ViT of configs/quickstart/tiny_synthetic_rein.yaml
(MODEL.VIT.*: timm name, width, depth, heads, patch, image size; its pixel normalisation)
learns from unlabelled synthetic streets (their own scene set, none a benchmark street) whose
appearance is randomised far beyond the benchmark's source style: per-surface palettes and
noise textures, exposure, illumination ramps, white balance, saturation, contrast, gamma,
blur and sensor noise, with nothing taken from the benchmark's target styles (the exact
ranges: rein_d2/data/synthetic/appearance.py; the views: rein_d2/data/synthetic/pretraining.py).

Objective: masked image modelling as MAE (rein_d2/modeling/mae.py): the encoder sees a random
quarter of the patches of a view, a light decoder predicts the normalised pixels of the
others. Chosen over self-distillation (DINO, iBOT) because it needs no teacher, no negatives
and no collapse-avoiding machinery, so a short run from scratch trains stably; because its
encoder runs on the visible quarter only, about three times cheaper per view on a CPU; and
because on randomised palettes a hidden patch can only be predicted from the context that
tells which surface it belongs to, which is what segmentation needs. MAE is also one of the
paper's VFMs. Its known weakness, frozen features that are less linearly separable than
DINOv2's, is part of what the quickstart's Freeze / Rein / Full table shows at this scale.

Deterministic on the CPU: the weights' initialisation, every view (drawn from seed, step and
position in the batch, whichever process renders it) and every mask follow from --seed, so the
same seed gives the same losses and the same weights. The output holds the ViT's tensors
(what MODEL.VIT.WEIGHTS loads) and, as safetensors metadata, the command, seed, steps, losses
and training time; tools/quickstart.py prints them.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from rein_d2.config import load_config
from rein_d2.data.synthetic.pretraining import StreetPool, pretraining_batch, render_street_pool
from rein_d2.errors import ConfigError
from rein_d2.modeling.backbone import create_timm_vfm
from rein_d2.modeling.mae import MaskedAutoencoder
from rein_d2.utils.atomic import atomic_output
from rein_d2.utils.cli import user_errors

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "quickstart" / "tiny_synthetic_rein.yaml"
DEFAULT_OUTPUT = REPO / "models" / "tiny_foundation_vit.safetensors"
# DINOv2's LayerScale starts at 1e-5, made for giant models trained for weeks; a six-block ViT
# trained for minutes from scratch starts its residual branches at 0.1 instead.
LAYER_SCALE_INIT = 0.1
NO_DECAY = ("pos_embed", "cls_token", "mask_token")
logger = logging.getLogger("rein_d2.pretrain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", type=Path, default=DEFAULT_CONFIG,
                        help="config whose MODEL.VIT and MODEL.PIXEL_MEAN/STD define the ViT and its input")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.5e-3, help="AdamW peak learning rate")
    parser.add_argument("--warmup-fraction", type=float, default=0.05,
                        help="share of the steps that warm the learning rate up linearly before its cosine decay")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--streets", type=int, default=1500, help="rendered streets that views are drawn from")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes rendering the streets and the views besides the training process")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training process (results are reproducible for one thread count)")
    parser.add_argument("--log-period", type=int, default=50)
    args = parser.parse_args(argv)
    checks = ((args.steps >= 1, "--steps must be at least 1"), (args.batch_size >= 1, "--batch-size must be at least 1"),
              (args.streets >= 1, "--streets must be at least 1"), (args.workers >= 0, "--workers must be 0 or more"),
              (args.threads >= 1, "--threads must be at least 1"),
              (0 <= args.warmup_fraction < 1, f"--warmup-fraction {args.warmup_fraction} must lie in [0, 1)"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"tools/pretrain_foundation.py: {message}")
    return args


class ViewBatches(Dataset):
    """Item `step`: that step's batch of views as a normalised RGB tensor [B, 3, S, S]."""

    def __init__(self, pool: StreetPool, size: int, batch: int, seed: int, steps: int, cfg: CfgNode) -> None:
        self.pool, self.size, self.batch, self.seed, self.steps = pool, size, batch, seed, steps
        self.mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: pretraining feeds RGB or BGR images")
        self.rgb = cfg.INPUT.FORMAT == "RGB"

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        views = pretraining_batch(self.pool, self.size, self.batch, self.seed, step)
        views = np.ascontiguousarray(views[..., ::-1] if self.rgb else views)
        images = torch.from_numpy(views).permute(0, 3, 1, 2).float()
        return (images - self.mean) / self.std


def _single_threaded_worker(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def build_encoder(cfg: CfgNode) -> torch.nn.Module:
    """The ViT that ReinViT builds from MODEL.VIT, with random weights and LAYER_SCALE_INIT."""
    v = cfg.MODEL.VIT
    overrides = {k: val for k, val in (("embed_dim", v.EMBED_DIM), ("depth", v.DEPTH), ("num_heads", v.NUM_HEADS)) if val}
    vit = create_timm_vfm(v.TIMM_NAME, v.PATCH_SIZE, v.IMG_SIZE, 0.0, v.DYNAMIC_IMG_SIZE, **overrides)
    for name, param in vit.named_parameters():
        if name.endswith(".gamma"):
            torch.nn.init.constant_(param, LAYER_SCALE_INIT)
    return vit


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95 as MAE); no weight decay on biases, norms, LayerScale and embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))


def warmup_cosine(warmup: int, steps: int):
    """Learning-rate factor per step: linear warmup to 1, then cosine decay to 0 at the last step."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup - 1)))
    return factor


def save_encoder(vit: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    state = {k: v.detach().contiguous() for k, v in vit.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def pretrain(args: argparse.Namespace, argv: list[str]) -> dict[str, str]:
    cfg = load_config(str(args.config_file), [])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vit = build_encoder(cfg)
    model = MaskedAutoencoder(vit, mask_ratio=args.mask_ratio)
    optimizer = build_optimizer(model, args)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(round(args.warmup_fraction * args.steps), args.steps))
    masks = torch.Generator().manual_seed(args.seed)
    size = cfg.MODEL.VIT.IMG_SIZE
    started = time.perf_counter()
    pool = render_street_pool(args.streets, args.seed, workers=1 + args.workers)
    logger.info("rendered %d streets in %.0fs; training %d steps of %d views of %dx%d", args.streets,
                time.perf_counter() - started, args.steps, args.batch_size, size, size)
    batches = DataLoader(ViewBatches(pool, size, args.batch_size, args.seed, args.steps, cfg), batch_size=None,
                         num_workers=args.workers, worker_init_fn=_single_threaded_worker, prefetch_factor=None
                         if args.workers == 0 else 4, persistent_workers=False)
    losses = []
    model.train()
    for step, images in enumerate(batches):
        loss = model(images, generator=masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"pretraining diverged at step {step + 1} (loss {losses[-1]}); lower --lr")
        if step == 0 or (step + 1) % args.log_period == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - started
            recent = losses[-args.log_period:]
            logger.info("step %d/%d  loss %.6f (mean of last %d: %.4f)  lr %.2e  %.0fs", step + 1, args.steps,
                        losses[-1], len(recent), sum(recent) / len(recent), schedule.get_last_lr()[0], elapsed)
    seconds = time.perf_counter() - started
    metadata = {
        "producer": "tools/pretrain_foundation.py",
        "command": shlex.join(["python", "tools/pretrain_foundation.py", *argv]),
        "seed": str(args.seed), "steps": str(args.steps), "batch_size": str(args.batch_size),
        "streets": str(args.streets), "objective": f"MAE, mask ratio {args.mask_ratio}",
        "first_loss": repr(losses[0]), "last_loss_mean_50": repr(sum(losses[-50:]) / len(losses[-50:])),
        "seconds": f"{seconds:.0f}", "torch_threads": str(torch.get_num_threads()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "vit": json.dumps({k: cfg.MODEL.VIT[k] for k in ("TIMM_NAME", "EMBED_DIM", "DEPTH", "NUM_HEADS",
                                                           "PATCH_SIZE", "IMG_SIZE")}),
    }
    save_encoder(vit, args.output, metadata)
    logger.info("wrote %s (%d tensors) after %.0fs", args.output, len(vit.state_dict()), seconds)
    return metadata


@user_errors
def main(argv: list[str] | None = None) -> dict[str, str]:
    argv = sys.argv[1:] if argv is None else argv
    setup_logger(name="rein_d2")
    return pretrain(parse_args(argv), argv)


if __name__ == "__main__":
    main()
