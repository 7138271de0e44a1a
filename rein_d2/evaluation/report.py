"""The multi-domain report: a table in the log, JSON, Markdown and a bar chart on disk."""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tabulate import tabulate

from rein_d2.utils.atomic import atomic_output

from .metrics import SegScores

REPORT_STEM = "dg_results"


@dataclass(frozen=True)
class DomainReport:
    """Scores of every evaluated dataset and their mean over the configured ones."""

    class_names: tuple[str, ...]
    names: tuple[str, ...]
    domains: tuple[str, ...]  # short labels for the chart
    scores: tuple[SegScores, ...]
    mean_over: tuple[str, ...]

    @classmethod
    def from_confusions(cls, class_names: Sequence[str], names: Sequence[str],
                        domains: Sequence[str], confusions: np.ndarray,
                        mean_over: Sequence[str]) -> "DomainReport":
        scores = tuple(SegScores.from_confusion(c) for c in confusions)
        return cls(tuple(class_names), tuple(names), tuple(domains), scores, tuple(mean_over))

    def mean(self) -> OrderedDict:
        """mIoU, mAcc and aAcc averaged over the `mean_over` datasets (official DG mean)."""
        chosen = [s for n, s in zip(self.names, self.scores) if n in self.mean_over]
        return OrderedDict((key, float(np.mean([getattr(s, attr) for s in chosen])))
                           for key, attr in (("mIoU", "miou"), ("mAcc", "macc"), ("aAcc", "aacc")))

    def results(self) -> OrderedDict:
        """Detectron2 results: {dataset: {"sem_seg": {...}}, ..., "mean": {"sem_seg": {...}}}."""
        results = OrderedDict((n, {"sem_seg": s.as_results(self.class_names)})
                              for n, s in zip(self.names, self.scores))
        results["mean"] = {"sem_seg": self.mean()}
        return results

    def summary_table(self, tablefmt: str = "pipe") -> str:
        rows = [[n, d, s.miou, s.macc, s.aacc]
                for n, d, s in zip(self.names, self.domains, self.scores)]
        mean = self.mean()
        rows.append([f"mean of {len(self.mean_over)}", "mean", *mean.values()])
        return tabulate(rows, headers=["dataset", "domain", "mIoU", "mAcc", "aAcc"],
                        tablefmt=tablefmt, floatfmt=".2f")

    def class_table(self, tablefmt: str = "pipe") -> str:
        rows = [[c, *(s.iou[i] for s in self.scores)] for i, c in enumerate(self.class_names)]
        return tabulate(rows, headers=["IoU", *self.domains], tablefmt=tablefmt, floatfmt=".2f")

    def to_json(self) -> dict:
        """Plain data with NaN as null (JSON has no NaN)."""
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(float(value), 4)

        return {
            "classes": list(self.class_names),
            "datasets": {
                n: {"domain": d, "mIoU": clean(s.miou), "mAcc": clean(s.macc),
                    "aAcc": clean(s.aacc),
                    "IoU": {c: clean(v) for c, v in zip(self.class_names, s.iou)},
                    "Acc": {c: clean(v) for c, v in zip(self.class_names, s.acc)}}
                for n, d, s in zip(self.names, self.domains, self.scores)},
            "mean": {"over": list(self.mean_over), **{k: clean(v) for k, v in self.mean().items()}},
        }

    def write(self, output_dir: str | Path) -> dict[str, Path]:
        """dg_results.{json,md,png} in `output_dir`, each written atomically."""
        output_dir = Path(output_dir)
        paths = {ext: output_dir / f"{REPORT_STEM}.{ext}" for ext in ("json", "md", "png")}
        with atomic_output(paths["json"]) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        with atomic_output(paths["md"]) as tmp:
            tmp.write_text("# Multi-domain semantic segmentation\n\n" + self.summary_table()
                           + "\n\n## Per-class IoU\n\n" + self.class_table() + "\n")
        with atomic_output(paths["png"]) as tmp:
            self.bar_chart().savefig(tmp, dpi=100)
        return paths

    def bar_chart(self) -> Figure:
        """mIoU per domain and their mean (Agg canvas, no display needed)."""
        labels = [*self.domains, "mean"]
        values = [s.miou for s in self.scores] + [self.mean()["mIoU"]]
        fig = Figure(figsize=(max(4.0, 0.6 * len(labels) + 1.5), 4.0), layout="tight")
        ax = fig.subplots()
        bars = ax.bar(range(len(labels)), np.nan_to_num(values),
                      color=["tab:blue"] * len(self.scores) + ["tab:orange"])
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0,
                      ha="right" if len(labels) > 6 else "center", fontsize=8)
        ax.set_ylabel("mIoU (%)")
        ax.set_ylim(0, 100)
        ax.set_title("mIoU per domain")
        return fig
