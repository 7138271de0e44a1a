"""The main job (`make demo`): what Rein is for, end to end on two CPU cores, in minutes.

No GPU, no dataset and no downloaded weights are needed. The steps:
  1. generate the synthetic benchmark: procedural streets labelled with its 6 classes, in a
     source style and nine shifted target domains (night, fog, rain, snow, colour, texture,
     noise, blur, jpeg);
  2. take the tiny foundation model, a ViT pretrained without labels on a broad synthetic world
     (models/tiny_foundation_vit.safetensors, made by tools/pretrain_foundation.py; --pretrain
     makes a new one first);
  3. fine-tune it on the labelled source domain only, with one recipe, three ways: Freeze
     (frozen ViT, Mask2Former trains), Rein (frozen ViT refined by Rein) and Full (everything
     trains, the ViT at a tenth of the head's learning rate); evaluate each on the source and
     every target domain. The three run side by side, one single-threaded process each, which
     uses two cores better than one process with two threads on these small tensors;
  4. write the Freeze / Rein / Full table (with each mode's trainable parameters and training
     CPU time) and a bar chart of it;
  5. run demo/demo.py with the best model (highest mIoU on the source validation split, never
     chosen on a target) on target-domain images and on a night-time video.
Everything goes under --output-dir (default output/quickstart); what an earlier run left there
is deleted first, so nothing but the installation and the shipped model is reused.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors import safe_open
from tabulate import tabulate
import torch

from rein_d2.config import load_config
from rein_d2.data import make_synthetic_video, register_synthetic_dg
from rein_d2.data.synthetic import ensure_splits, synthetic_splits
from rein_d2.engine import ReinTrainer
from rein_d2.utils.atomic import atomic_output, atomic_write_bytes
from rein_d2.utils.cli import user_errors

import pretrain_foundation  # tools/, on sys.path when this file runs

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "quickstart"
SHIPPED_FOUNDATION = REPO / "models" / "tiny_foundation_vit.safetensors"
MODES = ("freeze", "rein", "full")
DEMO_DOMAINS = ("night", "fog", "snow", "rain")
SOURCE = "source"
# What a run writes under --output-dir, and so what the next run deletes first (nothing else).
OUTPUTS = ("data", *MODES, "demo", "demo_inputs", "videos", "foundation_vit.safetensors", "results.md",
           "results.json", "results.png")
STEPS = 5
PROGRESS_PERIOD = 15.0  # seconds between progress lines while the modes train
logger = logging.getLogger("rein_d2.quickstart")


@dataclass(frozen=True)
class ModeRun:
    """One fine-tune mode's outcome."""

    trainable: int
    train_cpu_seconds: float  # of the training loop's process: comparable whatever else runs
    results: dict  # Detectron2 results per test dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "output" / "quickstart")
    parser.add_argument("--iters", type=int, default=None, help="iterations of every mode (default: the configs')")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=30, help="per domain")
    parser.add_argument("--video-frames", type=int, default=36)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of every mode's initialisation and data order (default: the configs' SEED)")
    parser.add_argument("--foundation", type=Path, default=SHIPPED_FOUNDATION,
                        help="the pretrained ViT to fine-tune (default: the shipped one)")
    parser.add_argument("--pretrain", action="store_true",
                        help="pretrain a new foundation ViT first (tools/pretrain_foundation.py) and use it")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="with --pretrain (default: its own)")
    parser.add_argument("--pretrain-streets", type=int, default=None, help="with --pretrain (default: its own)")
    return parser.parse_args(argv)


def clean_outputs(out: Path) -> None:
    """Delete what an earlier run wrote under `out` (only the OUTPUTS entries)."""
    for name in OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def generate_benchmark(root: Path, train_images: int, val_images: int) -> list[str]:
    """Register and render every split (each street once, in every domain's style)."""
    names = register_synthetic_dg(root, train_count=train_images, val_count=val_images)
    ensure_splits(synthetic_splits(train_count=train_images, val_count=val_images), root, workers=os.cpu_count() or 1)
    return names


def foundation_provenance(path: Path) -> str:
    """Where a foundation ViT file came from, from the metadata tools/pretrain_foundation.py writes."""
    with safe_open(str(path), framework="pt") as weights:
        meta = weights.metadata() or {}
    if meta.get("producer") != "tools/pretrain_foundation.py":
        return f"{path} (not made by tools/pretrain_foundation.py: no record of its pretraining)"
    return (f"{path}\n  pretrained without labels by `{meta['command']}` (seed {meta['seed']}, {meta['objective']}, "
            f"{meta['steps']} steps of {meta['batch_size']} views of {meta['streets']} streets, "
            f"{meta['seconds']}s on {meta['machine']}, torch threads: {meta['torch_threads']}; "
            f"loss {float(meta['first_loss']):.3f} -> {float(meta['last_loss_mean_50']):.3f})\n"
            "  on randomised-appearance streets that are not benchmark streets "
            "(README: what the pretraining saw); --pretrain makes a new one")


def pretrain(out: Path, args: argparse.Namespace) -> Path:
    path = out / "foundation_vit.safetensors"
    argv = ["--output", str(path)]
    for flag, value in (("--steps", args.pretrain_steps), ("--streets", args.pretrain_streets)):
        if value is not None:
            argv += [flag, str(value)]
    pretrain_foundation.main(argv)
    return path


def load_cfg(mode: str, out: Path, foundation: Path, args: argparse.Namespace) -> CfgNode:
    opts = ["OUTPUT_DIR", str(out / mode), "MODEL.VIT.WEIGHTS", str(foundation)]
    if args.iters is not None:
        opts += ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.CHECKPOINT_PERIOD", str(args.iters)]
    if args.seed is not None:
        opts += ["SEED", str(args.seed)]
    cfg = load_config(str(CONFIGS / f"tiny_synthetic_{mode}.yaml"), opts)
    cfg.freeze()
    return cfg


def fine_tune(mode: str, out: Path, foundation: Path, args: argparse.Namespace, threads: int) -> ModeRun:
    """In a process of its own: train one mode on DATASETS.TRAIN (timed alone), then score every
    DATASETS.TEST domain. Its log goes to OUTPUT_DIR/log.txt; the main process shows progress."""
    torch.set_num_threads(threads)
    cfg = load_cfg(mode, out, foundation, args)
    seed_all_rng(cfg.SEED)  # as train_net.py's default_setup: the same run gives the same table
    for name in ("detectron2", "rein_d2", "fvcore"):
        setup_logger(str(Path(cfg.OUTPUT_DIR) / "log.txt"), name=name, configure_stdout=False)
    register_synthetic_dg(out / "data", train_count=args.train_images, val_count=args.val_images)
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()  # evaluated below, outside the training time
    train_cfg.freeze()
    trainer = ReinTrainer(train_cfg)
    trainer.resume_or_load(resume=False)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    start = time.process_time()
    trainer.train()
    seconds = time.process_time() - start
    return ModeRun(trainable, seconds, ReinTrainer.test(cfg, trainer.model))


def iterations_done(out: Path, mode: str) -> int:
    """The last iteration a mode's training logged to its metrics.json (0 before the first)."""
    try:
        last = (out / mode / "metrics.json").read_text().strip().splitlines()[-1]
        return int(json.loads(last)["iteration"]) + 1
    except (OSError, IndexError, ValueError, KeyError):
        return 0


def fine_tune_all(out: Path, foundation: Path, args: argparse.Namespace,
                  meanwhile: Callable[[], object]) -> dict[str, ModeRun]:
    """Every mode in its own process, side by side, with a progress line every PROGRESS_PERIOD seconds;
    this process runs `meanwhile` first instead of only waiting."""
    iters = {mode: load_cfg(mode, out, foundation, args).SOLVER.MAX_ITER for mode in MODES}
    threads = max(1, (os.cpu_count() or 1) // len(MODES))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(MODES), mp_context=context) as pool:
        futures = {pool.submit(fine_tune, mode, out, foundation, args, threads): mode for mode in MODES}
        meanwhile()
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=PROGRESS_PERIOD)
            for future in done:
                run = future.result()
                logger.info("  %s: trained in %.0fs of CPU, %s trainable parameters, source mIoU %.1f",
                            futures[future].capitalize(), run.train_cpu_seconds, f"{run.trainable:,}",
                            run.results[f"synthetic_dg_{SOURCE}_val"]["sem_seg"]["mIoU"])
            if pending:
                logger.info("  iterations: %s (logs: %s)", ", ".join(
                    f"{m.capitalize()} {min(iterations_done(out, m), iters[m])}/{iters[m]}" for m in MODES),
                    out / "*" / "log.txt")
        return {futures[future]: future.result() for future in futures}


def domain_rows(runs: dict[str, ModeRun]) -> list[list]:
    """One row per domain (source first), then the mean over the targets: mIoU of each mode."""
    names = [name for name in runs[MODES[0]].results if name != "mean"]
    rows = [[name.removeprefix("synthetic_dg_").removesuffix("_val"),
             *(runs[mode].results[name]["sem_seg"]["mIoU"] for mode in MODES)] for name in names]
    targets = [row for row in rows if row[0] != SOURCE]
    rows.append(["mean (targets)", *(sum(r[i] for r in targets) / len(targets) for i in range(1, len(MODES) + 1))])
    return rows


def mode_rows(runs: dict[str, ModeRun], rows: list[list]) -> list[list]:
    """One row per mode: trainable parameters, training time, source and mean target mIoU."""
    source, mean = rows[0], rows[-1]
    return [[mode.capitalize(), f"{run.trainable:,}", round(run.train_cpu_seconds), source[i], mean[i]]
            for i, (mode, run) in enumerate(runs.items(), start=1)]


def bar_chart(rows: list[list], path: Path) -> None:
    """mIoU per domain, the three modes side by side (PNG, Agg, written atomically)."""
    figure = Figure(figsize=(11, 4.2), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.8 / len(MODES)
    for i, mode in enumerate(MODES):
        values = [row[1 + i] for row in rows]
        positions = [x + (i - (len(MODES) - 1) / 2) * width for x in range(len(rows))]
        bars = axes.bar(positions, values, width, label=mode.capitalize())
        axes.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7)
    axes.set_xticks(range(len(rows)), [row[0] for row in rows], rotation=30, ha="right")
    axes.axvline(0.5, color="grey", linewidth=0.8)
    axes.set_ylabel("mIoU (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Trained on the synthetic source domain only: mIoU per domain")
    axes.legend(ncols=len(MODES))
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=100)


def write_reports(out: Path, runs: dict[str, ModeRun], best: str, foundation: Path) -> tuple[str, str]:
    rows = domain_rows(runs)
    headers = ["domain", *(m.capitalize() for m in MODES)]
    summary_headers = ["mode", "trainable parameters", "training CPU (s)", "source mIoU", "mean target mIoU"]
    summary = mode_rows(runs, rows)
    markdown = (f"# mIoU per domain\n\n{tabulate(rows, headers, 'github', '.1f')}\n\n"
                f"# Fine-tune modes\n\n{tabulate(summary, summary_headers, 'github', '.1f')}\n\n"
                f"Best on the source validation split: {best.capitalize()}. Foundation model: {foundation}\n")
    atomic_write_bytes(out / "results.md", markdown.encode())
    report = {"headers": headers, "rows": rows, "best": best, "foundation": str(foundation),
              "modes": {mode: {"trainable_parameters": run.trainable, "train_cpu_seconds": run.train_cpu_seconds}
                        for mode, run in runs.items()}}
    atomic_write_bytes(out / "results.json", json.dumps(report, indent=2).encode())
    bar_chart(rows, out / "results.png")
    return (tabulate(rows, headers=headers, floatfmt=".1f"),
            tabulate(summary, headers=summary_headers, floatfmt=".1f"))


def best_mode(runs: dict[str, ModeRun]) -> str:
    """The mode with the highest source-validation mIoU (targets are never looked at)."""
    return max(runs, key=lambda mode: runs[mode].results[f"synthetic_dg_{SOURCE}_val"]["sem_seg"]["mIoU"])


def run_demo(out: Path, mode: str, video: Path, foundation: Path) -> None:
    """demo/demo.py on a few target-domain images and on the night-time video, both at once."""
    demo_dir = out / "demo"
    images = []
    for domain in DEMO_DOMAINS:  # named by their domain, so that the overlays are (<domain>_seg.png)
        first = Path(DatasetCatalog.get(f"synthetic_dg_{domain}_val")[0]["file_name"])
        images.append(out / "demo_inputs" / f"{domain}{first.suffix}")
        atomic_write_bytes(images[-1], first.read_bytes())
    opts = ["MODEL.WEIGHTS", str(out / mode / "model_final.pth"), "MODEL.VIT.WEIGHTS", str(foundation)]
    base = [sys.executable, str(REPO / "demo" / "demo.py"), "--config-file", str(CONFIGS / f"tiny_synthetic_{mode}.yaml")]
    demos = [subprocess.Popen([*base, *inputs, "--output", str(demo_dir), "--opts", *opts])
             for inputs in (["--input", *map(str, images), "--side-by-side"], ["--video-input", str(video)])]
    for demo in demos:
        if demo.wait():
            raise subprocess.CalledProcessError(demo.returncode, demo.args)


def step(number: int, title: str, work: Callable[[], object]) -> object:
    start = time.perf_counter()
    logger.info("[%d/%d] %s", number, STEPS, title)
    result = work()
    logger.info("[%d/%d] done in %.0fs", number, STEPS, time.perf_counter() - start)
    return result


@user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.output_dir.resolve()
    setup_logger(name="rein_d2")
    setup_logger()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    clean_outputs(out)
    step(1, "generating the synthetic benchmark",
         lambda: generate_benchmark(out / "data", args.train_images, args.val_images))
    foundation = step(2, "the tiny foundation model" + (": pretraining a new one" if args.pretrain else ""),
                      lambda: pretrain(out, args) if args.pretrain else args.foundation.resolve())
    logger.info("foundation model: %s", foundation_provenance(foundation))
    video = out / "videos" / "night_drive.mp4"
    runs = step(3, "fine-tuning Freeze, Rein and Full on the source domain side by side, evaluating each on every "
                "domain (and rendering the demo's night-time video meanwhile)", lambda: fine_tune_all(
                    out, foundation, args, lambda: make_synthetic_video(video, "night", frames=args.video_frames)))
    best = best_mode(runs)
    tables = step(4, "writing the Freeze / Rein / Full table and bar chart",
                  lambda: write_reports(out, runs, best, foundation))
    step(5, f"segmenting target-domain images and a night-time video with the best model ({best.capitalize()})",
         lambda: run_demo(out, best, video, foundation))
    print(f"\nmIoU (%) per domain, fine-tuned on the synthetic source domain only:\n{tables[0]}\n\n{tables[1]}\n")
    print(f"Foundation model: {foundation_provenance(foundation)}")
    print(f"Best on the source validation split: {best.capitalize()} (used by the demo).")
    print(f"Finished in {time.perf_counter() - started:.0f}s (load average {load_before:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end). Results are in {out}:")
    for what, where in (("tables", "results.md"), ("bar chart", "results.png"),
                        ("per-run reports", "*/inference/dg_results.*"), ("overlays and video", "demo/"),
                        ("checkpoints", "*/model_final.pth")):
        print(f"  {what:18s} {out / where}")


if __name__ == "__main__":
    main()
