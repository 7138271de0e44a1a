"""Training variants: their step as the real trainer runs it, and peak memory of training and inference.

Peak memory is measured with `python -m rein_d2.benchmark.training CONFIG.yaml --size H W
[--inference]`, one fresh process per variant, which prints one JSON line: on the CPU only a
fresh process gives an honest peak (see memory.py). Step times are measured in the calling
process, where the variants can take turns (timing.median_seconds).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from ..config import load_config
from ..engine.amp import MixedPrecisionTrainer
from ..solver import build_optimizer
from .memory import LIVE_MEMORY_ENV, PeakMemory

# Steps whose peak is taken: the first allocates the optimizer state, the second runs with it.
MEMORY_STEPS = 2


def synthetic_batch(size: tuple[int, int], batch: int, num_classes: int) -> list[dict]:
    """Random images and label maps: a step's cost does not depend on their values."""
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator),
             "sem_seg": torch.randint(0, num_classes, size, generator=generator)} for _ in range(batch)]


def build_training_step(cfg: CfgNode, size: tuple[int, int], batch: int) -> tuple[nn.Module, Callable[[], None]]:
    """The model and one step of the trainer train_net uses for `cfg` (forward, backward, optimizer,
    mixed precision if SOLVER.AMP.ENABLED), on one synthetic batch; call it inside an EventStorage."""
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    data = itertools.repeat(synthetic_batch(size, batch, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES))
    if cfg.SOLVER.AMP.ENABLED:
        trainer = MixedPrecisionTrainer(model, data, optimizer, cfg.SOLVER.AMP.PRECISION)
    else:
        trainer = SimpleTrainer(model, data, optimizer)
    return model, trainer.run_step


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_parameters": sum(p.numel() for p in model.parameters())}


def peak_training_memory(cfg: CfgNode, size: tuple[int, int], batch: int) -> dict:
    """Peak memory of everything training allocates (model, gradients, optimizer state,
    activations) over MEMORY_STEPS steps; meant for a fresh process."""
    memory = PeakMemory(torch.device(cfg.MODEL.DEVICE))
    memory.start()
    model, step = build_training_step(cfg, size, batch)
    with EventStorage():
        for _ in range(MEMORY_STEPS):
            step()
    return {"peak_memory_bytes": memory.peak_bytes(), "memory_method": memory.method, **parameter_counts(model)}


def peak_memory_in_subprocesses(cfgs: Mapping[str, CfgNode], work_dir: Path, size: tuple[int, int],
                                batch: int, extra_args: Mapping[str, list[str]] | None = None) -> dict[str, dict]:
    """peak_training_memory of each variant in its own process (or what `extra_args[name]`,
    e.g. ["--inference"], asks of it). On the CPU they run side by side (each process counts
    only its own memory); on CUDA one at a time, as they share a device."""
    commands = {}
    for name, cfg in cfgs.items():
        config_path = work_dir / f"{name}.yaml"
        config_path.write_text(cfg.dump())
        commands[name] = [sys.executable, "-m", "rein_d2.benchmark.training", str(config_path),
                          "--size", *map(str, size), "--batch", str(batch), *(extra_args or {}).get(name, [])]
    concurrent = all(torch.device(cfg.MODEL.DEVICE).type == "cpu" for cfg in cfgs.values())
    results = {}
    running: dict[str, subprocess.Popen] = {}
    for name, command in commands.items():
        running[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         env={**os.environ, **LIVE_MEMORY_ENV})
        if not concurrent:
            results[name] = _result(name, command, running.pop(name))
    for name, process in running.items():
        results[name] = _result(name, commands[name], process)
    return results


def _result(name: str, command: list[str], process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"memory benchmark of {name!r} failed ({' '.join(command)}):\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def peak_inference_memory(cfg: CfgNode, size: tuple[int, int], batch: int, queries_per_chunk: int = 0) -> dict:
    """Peak memory of one inference call (sliding window if TEST.SLIDE.ENABLED) beyond the model's
    weights; `queries_per_chunk` > 0 overrides how many queries' masks are upsampled at a time."""
    model = build_model(cfg).eval()
    if queries_per_chunk:
        model.queries_per_chunk = queries_per_chunk
    images = [{"image": image["image"]} for image in synthetic_batch(size, batch, 1)]
    memory = PeakMemory(torch.device(cfg.MODEL.DEVICE))
    memory.start()
    with torch.no_grad():
        model(images)
    return {"peak_memory_bytes": memory.peak_bytes(), "memory_method": memory.method,
            "queries_per_chunk": model.queries_per_chunk}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peak training (or inference) memory of one config, "
                                                 "as one JSON line.")
    parser.add_argument("config", help="a full config dump (YAML)")
    parser.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--inference", action="store_true", help="one inference call instead of training steps")
    parser.add_argument("--queries-per-chunk", type=int, default=0, help="with --inference: override the chunk")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.inference:
        print(json.dumps(peak_inference_memory(cfg, tuple(args.size), args.batch, args.queries_per_chunk)))
    else:
        print(json.dumps(peak_training_memory(cfg, tuple(args.size), args.batch)))


if __name__ == "__main__":
    main()
