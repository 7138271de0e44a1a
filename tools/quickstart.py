"""The main job (`make demo`): show what Rein costs and changes on a real-size foundation model.

Builds DINOv2-L/16 at 512 px from configs/backbones/rein_dinov2_large.yaml in the three
fine-tune modes (Rein, Freeze, Full), reports their trainable parameters, and runs the
Rein backbone on one image to show the feature pyramid and the linked queries.
Random weights: nothing is downloaded.
"""
from __future__ import annotations

import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from tabulate import tabulate

from rein_d2 import add_rein_config
from rein_d2.modeling.rein import REIN_QUERIES_KEY

CONFIG = "configs/backbones/rein_dinov2_large.yaml"


def build(mode: str) -> torch.nn.Module:
    cfg = get_cfg()
    add_rein_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.VIT.FINETUNE = mode
    return build_backbone(cfg)


def main() -> None:
    rows = []
    for mode in ("rein", "freeze", "full"):
        start = time.perf_counter()
        backbone = build(mode)
        trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
        total = sum(p.numel() for p in backbone.parameters())
        rows.append([mode, f"{trainable:,}", f"{total:,}", f"{100 * trainable / total:.2f}%",
                     f"{time.perf_counter() - start:.1f}s"])
        if mode == "rein":
            rein_backbone = backbone.eval()
    print(tabulate(rows, headers=["fine-tune", "trainable", "total", "share", "build"]))
    with torch.inference_mode():
        start = time.perf_counter()
        features = rein_backbone(torch.randn(1, 3, 512, 512))
        elapsed = time.perf_counter() - start
    print(f"\nRein DINOv2-L forward on one 512x512 image: {elapsed:.2f}s")
    for name, tensor in features.items():
        label = "queries for Mask2Former" if name == REIN_QUERIES_KEY else "feature map"
        print(f"  {name:13s} {tuple(tensor.shape)}  {label}")


if __name__ == "__main__":
    main()
