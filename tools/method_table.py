"""Print the README's method table (Markdown): each method's config, its trainable backbone
parameters, measured by building the config's backbone on the `meta` device (no memory, no weight
files), and the paper's trainable parameters and mIoU for reference, typed from the paper.

    python tools/method_table.py > table.md

A method is one line of ROWS below. "Trainable backbone parameters" are those of the VFM and its
refinement (ReinViT / ReinCNN), not of an FPN or head on top, as the paper counts them. The paper's
values are those of its Table 4 (PEFT and DGSS baselines; arXiv v1 Table 3) and Table 14 (SemFPN;
arXiv v1 Table 9), GTAV -> Cityscapes / BDD100K / Mapillary.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from detectron2.modeling import build_backbone

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rein_d2.config import load_config
from rein_d2.modeling.backbone import ReinCNN, ReinViT
from rein_d2.utils.cli import user_errors

PaperMIoU = tuple[float, float, float]  # GTAV -> Cityscapes / BDD100K / Mapillary


@dataclass(frozen=True)
class Row:
    method: str
    config: str  # under configs/
    paper_params: float  # the paper's trainable backbone parameters, in millions (two decimals)
    paper: PaperMIoU


# The paper's values per VFM, in its order: method, config (with {vfm}), trainable (M), mIoU.
TABLE4 = {
    "dinov2": (
        ("Full", "baselines/full_{vfm}", 304.20, (63.7, 57.4, 64.2)),
        ("Full + AdvStyle", "baselines/full_advstyle_{vfm}", 304.20, (60.8, 58.0, 62.5)),
        ("Full + PASTA", "baselines/full_pasta_{vfm}", 304.20, (62.5, 57.2, 64.7)),
        ("Full + GTR-LTR", "baselines/full_gtr_ltr_{vfm}", 304.20, (62.7, 57.4, 64.5)),
        ("Freeze", "baselines/freeze_{vfm}", 0.00, (63.3, 56.1, 63.9)),
        ("Freeze + AdvStyle", "baselines/freeze_advstyle_{vfm}", 0.00, (61.5, 55.1, 63.9)),
        ("Freeze + PASTA", "baselines/freeze_pasta_{vfm}", 0.00, (62.1, 57.2, 64.5)),
        ("Freeze + GTR-LTR", "baselines/freeze_gtr_ltr_{vfm}", 0.00, (60.2, 57.7, 62.2)),
        ("LoRA", "baselines/lora_{vfm}", 0.79, (65.2, 58.3, 64.6)),
        ("AdaptFormer", "baselines/adaptformer_{vfm}", 3.17, (64.9, 59.0, 64.2)),
        ("VPT", "baselines/vpt_{vfm}", 3.69, (65.2, 59.4, 65.5)),
        ("Rein", "dinov2/rein_{vfm}", 2.99, (66.4, 60.4, 66.1)),
    ),
    "eva02": (
        ("Full", "baselines/full_{vfm}", 304.24, (62.1, 56.2, 64.6)),
        ("Full + AdvStyle", "baselines/full_advstyle_{vfm}", 304.24, (63.1, 56.4, 64.0)),
        ("Full + PASTA", "baselines/full_pasta_{vfm}", 304.24, (61.8, 57.1, 63.6)),
        ("Full + GTR-LTR", "baselines/full_gtr_ltr_{vfm}", 304.24, (59.8, 57.4, 63.2)),
        ("Freeze", "baselines/freeze_{vfm}", 0.00, (56.5, 53.6, 58.6)),
        ("Freeze + AdvStyle", "baselines/freeze_advstyle_{vfm}", 0.00, (51.4, 51.6, 56.5)),
        ("Freeze + PASTA", "baselines/freeze_pasta_{vfm}", 0.00, (57.8, 52.3, 58.5)),
        ("Freeze + GTR-LTR", "baselines/freeze_gtr_ltr_{vfm}", 0.00, (52.5, 52.8, 57.1)),
        ("LoRA", "baselines/lora_{vfm}", 1.18, (55.5, 52.7, 58.3)),
        ("AdaptFormer", "baselines/adaptformer_{vfm}", 3.17, (63.7, 59.9, 64.2)),
        ("VPT", "baselines/vpt_{vfm}", 3.69, (62.2, 57.7, 62.5)),
        ("Rein", "vfms/rein_{vfm}", 2.99, (65.3, 60.5, 64.9)),
    ),
}
TABLE14 = {
    "dinov2": (("Full", 304.20, (61.2, 55.9, 62.5)), ("Freeze", 0.00, (58.9, 56.4, 60.3)),
               ("Rein", 2.53, (63.6, 59.0, 63.7))),
    "eva02": (("Full", 304.24, (58.5, 56.9, 62.0)), ("Freeze", 0.00, (54.1, 51.2, 54.3)),
              ("Rein", 2.53, (61.4, 58.5, 62.0))),
}

ROWS: tuple[Row, ...] = (
    *(Row(method, f"{config.format(vfm=vfm)}_large_gta_512.yaml", params, paper)
      for vfm, rows in TABLE4.items() for method, config, params, paper in rows),
    *(Row(f"SemFPN {method}", f"semfpn/{method.lower()}_{vfm}_large_gta_512.yaml", params, paper)
      for vfm, rows in TABLE14.items() for method, params, paper in rows),
)


def measure(config: Path) -> tuple[str, int]:
    """(the VFM's timm name, its trainable backbone parameters), built on the meta device without
    weight files: the count does not depend on their values."""
    cfg = load_config(str(config))
    cfg.MODEL.VIT.WEIGHTS = ""
    cfg.MODEL.CNN.WEIGHTS = ""
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    vfm = next(m for m in backbone.modules() if isinstance(m, (ReinViT, ReinCNN)))
    name = cfg.MODEL.CNN.TIMM_NAME if isinstance(vfm, ReinCNN) else cfg.MODEL.VIT.TIMM_NAME
    return name, sum(p.numel() for p in vfm.parameters() if p.requires_grad)


def method_table(rows: tuple[Row, ...] = ROWS) -> str:
    lines = ["| method | VFM | config | trainable backbone parameters (built) | paper: trainable, "
             "mIoU Citys / BDD / Map |",
             "|---|---|---|---|---|"]
    for row in rows:
        name, count = measure(REPO / "configs" / row.config)
        paper = " / ".join(f"{v:.1f}" for v in row.paper)
        lines.append(f"| {row.method} | `{name}` | `{row.config}` | {count / 1e6:.2f}M ({count:,}) | "
                     f"{row.paper_params:.2f}M, {paper} |")
    return "\n".join(lines)


def main() -> None:
    print(method_table())


if __name__ == "__main__":
    user_errors(main)()
