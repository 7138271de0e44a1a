"""Print the README's method table (Markdown): each method's config, its trainable backbone
parameters, measured by building the config's backbone on the `meta` device (no memory, no weight
files), and the paper's mIoU for reference, typed from the paper.

    python tools/method_table.py > table.md

A method is one line of ROWS below. "Trainable backbone parameters" are those of the VFM and its
refinement (ReinViT / ReinCNN), not of an FPN or head on top, as the paper counts them.
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
    paper: PaperMIoU | None = None  # typed from the paper's Table 4; None: not typed in (yet)


ROWS: tuple[Row, ...] = (
    Row("Full", "baselines/full_dinov2_large_gta_512.yaml", (63.7, 57.4, 64.2)),
    Row("Freeze", "baselines/freeze_dinov2_large_gta_512.yaml", (63.3, 56.1, 63.9)),
    Row("LoRA", "baselines/lora_dinov2_large_gta_512.yaml"),
    Row("AdaptFormer", "baselines/adaptformer_dinov2_large_gta_512.yaml"),
    Row("VPT", "baselines/vpt_dinov2_large_gta_512.yaml"),
    Row("Rein", "dinov2/rein_dinov2_large_gta_512.yaml", (66.4, 60.4, 66.1)),
    Row("LoRA", "baselines/lora_eva02_large_gta_512.yaml"),
    Row("AdaptFormer", "baselines/adaptformer_eva02_large_gta_512.yaml"),
    Row("VPT", "baselines/vpt_eva02_large_gta_512.yaml"),
    Row("Rein", "vfms/rein_eva02_large_gta_512.yaml"),
    *(Row(f"{mode.capitalize()} + {name}", f"baselines/{mode}_{key}_dinov2_large_gta_512.yaml")
      for mode in ("full", "freeze") for key, name in (("advstyle", "AdvStyle"), ("pasta", "PASTA"),
                                                        ("gtr_ltr", "GTR-LTR"))),
    *(Row(f"SemFPN {mode.capitalize()}", f"semfpn/{mode}_{vfm}_large_gta_512.yaml")
      for vfm in ("dinov2", "eva02") for mode in ("freeze", "full", "rein")),
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
    lines = ["| method | VFM | config | trainable backbone parameters (built) | paper mIoU, Citys / BDD / Map (typed) |",
             "|---|---|---|---|---|"]
    for row in rows:
        name, count = measure(REPO / "configs" / row.config)
        paper = " / ".join(f"{v:.1f}" for v in row.paper) if row.paper else ""
        lines.append(f"| {row.method} | `{name}` | `{row.config}` | {count / 1e6:.2f}M ({count:,}) | {paper} |")
    return "\n".join(lines)


def main() -> None:
    print(method_table())


if __name__ == "__main__":
    user_errors(main)()
