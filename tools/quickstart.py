"""The main job (`make demo`): domain generalisation end to end, on two CPU cores, in minutes.

No GPU, no Cityscapes and no DINOv2 weights are needed. The steps:
  1. generate the synthetic benchmark: procedural streets in a source style and nine
     shifted target domains (night, fog, rain, snow, colour, texture, noise, blur, jpeg);
  2. train a tiny ViT "foundation model" with Mask2Former on the source domain, all
     weights trainable (this is also the Full baseline), and keep its ViT;
  3. train Mask2Former on that frozen ViT without (Freeze) and with Rein;
  4. evaluate the three on every domain: a Freeze / Rein / Full table;
  5. run demo/demo.py with the Rein model on target-domain images and on a short video.
Everything goes under --output-dir (default output/quickstart).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger
from safetensors.torch import save_file
from tabulate import tabulate

from rein_d2.config import load_config
from rein_d2.utils.cli import user_errors
from rein_d2.data import make_synthetic_video, register_synthetic_dg
from rein_d2.engine import ReinTrainer
from rein_d2.utils.atomic import atomic_output, atomic_write_bytes

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "quickstart"
MODES = ("freeze", "rein", "full")
DEMO_DOMAINS = ("night", "fog", "snow", "rain")
logger = logging.getLogger("rein_d2.quickstart")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO / "output" / "quickstart")
    parser.add_argument("--full-iters", type=int, default=600, help="iterations of the foundation / Full run")
    parser.add_argument("--iters", type=int, default=300, help="iterations of the Freeze and Rein runs")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=50, help="per domain")
    parser.add_argument("--video-frames", type=int, default=36)
    return parser.parse_args(argv)


def load_cfg(mode: str, out: Path, iters: int, vit_weights: Path) -> CfgNode:
    cfg = load_config(str(CONFIGS / f"tiny_synthetic_{mode}.yaml"), [
        "OUTPUT_DIR", str(out / mode), "SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", str(iters),
        "MODEL.VIT.WEIGHTS", "" if mode == "full" else str(vit_weights)])
    cfg.freeze()
    return cfg


def train_and_evaluate(cfg: CfgNode) -> tuple[ReinTrainer, dict]:
    """Train; Detectron2's evaluation hook scores every DATASETS.TEST domain at the end."""
    trainer = ReinTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer, trainer._last_eval_results


def export_vit(trainer: ReinTrainer, path: Path) -> None:
    """The trained ViT's tensors, as the frozen 'foundation model' of the other runs."""
    state = {k: v.contiguous() for k, v in trainer.model.backbone.vit.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp))


def results_table(results: dict[str, dict]) -> tuple[list[str], list[list]]:
    """Rows: domains (then the mean over targets); columns: mIoU of each fine-tune mode."""
    domains = [name for name in results["rein"] if name != "mean"]
    rows = [[name.removeprefix("synthetic_dg_").removesuffix("_val")] +
            [results[mode][name]["sem_seg"]["mIoU"] for mode in MODES] for name in domains]
    targets = [row for row in rows if row[0] != "source"]
    rows.append(["mean (targets)"] + [sum(r[i] for r in targets) / len(targets) for i in range(1, len(MODES) + 1)])
    return ["domain", *(m.capitalize() for m in MODES)], rows


def run_demo(out: Path, cfg: CfgNode, frames: int) -> None:
    demo_dir = out / "demo"
    images = [DatasetCatalog.get(f"synthetic_dg_{domain}_val")[0]["file_name"] for domain in DEMO_DOMAINS]
    video = make_synthetic_video(out / "videos" / "night_drive.mp4", "night", frames=frames)
    opts = ["MODEL.WEIGHTS", str(Path(cfg.OUTPUT_DIR) / "model_final.pth"), "MODEL.VIT.WEIGHTS", cfg.MODEL.VIT.WEIGHTS]
    base = [sys.executable, str(REPO / "demo" / "demo.py"), "--config-file", str(CONFIGS / "tiny_synthetic_rein.yaml")]
    for inputs in (["--input", *images, "--side-by-side"], ["--video-input", str(video)]):
        subprocess.run([*base, *inputs, "--output", str(demo_dir), "--opts", *opts], check=True)


def step(number: int, title: str, work: Callable[[], object]) -> object:
    start = time.perf_counter()
    logger.info("[%d/5] %s", number, title)
    result = work()
    logger.info("[%d/5] done in %.0fs", number, time.perf_counter() - start)
    return result


@user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.output_dir.resolve()
    setup_logger(name="rein_d2")
    setup_logger()
    started = time.perf_counter()
    register_synthetic_dg(out / "data", train_count=args.train_images, val_count=args.val_images)
    step(1, "generating the synthetic benchmark", lambda: [DatasetCatalog.get(n) for n in DatasetCatalog.list()
                                                         if n.startswith("synthetic_dg_")])
    vit_weights = out / "foundation_vit.safetensors"
    results = {}
    full_trainer, results["full"] = step(2, "training the tiny foundation model (Full) on the source domain",
                                         lambda: train_and_evaluate(load_cfg("full", out, args.full_iters, vit_weights)))
    export_vit(full_trainer, vit_weights)
    rein_cfg = load_cfg("rein", out, args.iters, vit_weights)
    for mode, cfg in (("freeze", load_cfg("freeze", out, args.iters, vit_weights)), ("rein", rein_cfg)):
        results[mode] = step(3, f"training Mask2Former on the frozen foundation model ({mode})",
                             lambda cfg=cfg: train_and_evaluate(cfg)[1])
    headers, rows = results_table(results)
    table = tabulate(rows, headers=headers, floatfmt=".1f")
    step(4, "writing the Freeze / Rein / Full table", lambda: (
        atomic_write_bytes(out / "results.md", f"# mIoU per domain\n\n{tabulate(rows, headers, 'github', '.1f')}\n".encode()),
        atomic_write_bytes(out / "results.json", json.dumps({"headers": headers, "rows": rows}, indent=2).encode())))
    step(5, "segmenting target-domain images and a night-time video with demo/demo.py",
         lambda: run_demo(out, rein_cfg, args.video_frames))
    print(f"\nmIoU (%) per domain, trained on the synthetic source only:\n{table}\n")
    print(f"Finished in {time.perf_counter() - started:.0f}s. Results are in {out}:")
    for what, where in (("table", "results.md"), ("per-run reports", "*/inference/dg_results.*"),
                        ("overlays and video", "demo/"), ("checkpoints", "*/model_final.pth")):
        print(f"  {what:18s} {out / where}")


if __name__ == "__main__":
    main()
