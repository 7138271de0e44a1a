"""The classes of a semantic segmentation dataset, read from its MetadataCatalog entry.

Every part of rein-d2 after the loaders (label checks, the training mapper, the evaluator,
its reports, the demo's colours and legend) takes a dataset's classes from here, never from
a constant, so any registered dataset works: the DGSS benchmarks (19 Cityscapes classes),
Detectron2's builtin ones (`ade20k_sem_seg_*` has 150) and a user's own. The entry's keys
are Detectron2's: `stuff_classes` (required), `stuff_colors` (optional, RGB) and
`ignore_label` (optional, 255 when absent, Detectron2's default IGNORE_VALUE).
"""
from __future__ import annotations

import colorsys
import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import ConfigError
from .label_io import read_train_ids

RGB = tuple[int, int, int]
DEFAULT_IGNORE_LABEL = 255
_GOLDEN_RATIO = 0.618033988749895
# (saturation, value) levels taken in turn, so that neighbouring ids differ in more than hue.
_SHADES = ((0.85, 0.95), (0.6, 0.75), (0.95, 0.6))


def generated_colors(count: int) -> tuple[RGB, ...]:
    """`count` RGB colours for a dataset without `stuff_colors`: the same ones on every run and
    machine (hues a golden ratio apart, three shades in turn), none of them black."""
    colors = []
    for index in range(count):
        saturation, value = _SHADES[index % len(_SHADES)]
        rgb = colorsys.hsv_to_rgb((index * _GOLDEN_RATIO) % 1.0, saturation, value)
        colors.append(tuple(round(255 * c) for c in rgb))
    return tuple(colors)


@dataclass(frozen=True)
class DatasetClasses:
    """Class names (in train-id order), the ignore label and, if the dataset has them, colours."""

    names: tuple[str, ...]
    ignore_label: int = DEFAULT_IGNORE_LABEL
    colors: tuple[RGB, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def of(cls, dataset_name: str) -> DatasetClasses:
        """The classes of a registered dataset; a ConfigError naming it when it has none."""
        if dataset_name not in DatasetCatalog:
            close = difflib.get_close_matches(dataset_name, DatasetCatalog.list(), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"dataset '{dataset_name}' is not registered{hint} Use a registered name "
                              "(rein-d2's dg_* and synthetic_dg_* splits, Detectron2's builtin ones such as "
                              "ade20k_sem_seg_train, or your own: see datasets/README.md).")
        meta = MetadataCatalog.get(dataset_name)
        names = meta.get("stuff_classes")
        if not names:
            raise ConfigError(f"dataset '{dataset_name}' has no 'stuff_classes' in its MetadataCatalog entry: "
                              "semantic segmentation needs the class names in train-id order; set "
                              f"MetadataCatalog.get('{dataset_name}').set(stuff_classes=[...], ignore_label=255)")
        colors = meta.get("stuff_colors")
        if colors is not None:
            colors = tuple(tuple(int(v) for v in c) for c in colors)
            if len(colors) != len(names) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
                raise ConfigError(f"dataset '{dataset_name}': its MetadataCatalog 'stuff_colors' must hold one "
                                  f"RGB triple of 0..255 per class ({len(names)}), got {len(colors)} entries")
        return cls(tuple(names), int(meta.get("ignore_label", DEFAULT_IGNORE_LABEL)), colors)

    def palette(self) -> tuple[RGB, ...]:
        """One RGB colour per class: `stuff_colors`, else generated_colors (deterministic)."""
        return self.colors if self.colors is not None else generated_colors(self.num_classes)

    def metadata(self) -> dict:
        """The MetadataCatalog keys that `of` reads back."""
        meta = {"stuff_classes": list(self.names), "ignore_label": self.ignore_label}
        if self.colors is not None:
            meta["stuff_colors"] = [list(c) for c in self.colors]
        return meta

    def id_range(self) -> dict[str, int]:
        """num_classes and ignore_label: the keyword arguments of check_train_ids and the prepare helpers."""
        return {"num_classes": self.num_classes, "ignore_label": self.ignore_label}

    def read_labels(self, path: str | Path) -> np.ndarray:
        """A label map of this dataset, refused (naming the file) unless it holds its train ids."""
        return read_train_ids(path, **self.id_range())
