"""Fixed fractions of a training split (the semi-supervised setting: 1/16 of Cityscapes train).

A subset is a text file of image ids, one `<sub>/<id>` per line (for Cityscapes `city/stem`,
the image's path under `leftImg8bit/train` without `_leftImg8bit.png`), kept in the
repository so that every user trains on the same images. `draw_fraction` drew it from the
sorted list of the full split's ids, which the repository keeps next to it, so the draw can
be checked: a seeded NumPy generator picks round(n / denominator) ids without replacement.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .catalog import DGDataset
from .loader import DatasetLayoutError, load_dg_dataset

SPLITS_DIR = Path(__file__).resolve().parents[2] / "datasets" / "splits"
SUBSET_SEED = 0


def draw_fraction(ids: Sequence[str], denominator: int, seed: int = SUBSET_SEED) -> list[str]:
    """round(len(ids) / denominator) ids, drawn without replacement from the sorted ids."""
    pool = sorted(set(ids))
    picked = np.random.default_rng(seed).choice(len(pool), size=round(len(pool) / denominator), replace=False)
    return sorted(pool[i] for i in picked)


def read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def record_id(record: dict, image_dir: str | Path, image_suffix: str) -> str:
    """`<sub>/<id>` of a record: its image path under `image_dir`, without the suffix."""
    relative = Path(record["file_name"]).relative_to(image_dir).as_posix()
    return relative.removesuffix(image_suffix)


def select_subset(records: list[dict], subset_file: Path, image_dir: str | Path,
                  image_suffix: str) -> list[dict]:
    """The records whose ids `subset_file` lists; every listed id must be present."""
    wanted = read_ids(subset_file)
    by_id = {record_id(r, image_dir, image_suffix): r for r in records}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} of the {len(wanted)} images listed in {subset_file} are not in {image_dir} "
            f"(first: {', '.join(missing[:3])}); the subset needs the complete split as downloaded")
    return [by_id[i] for i in wanted]


# Subsets registered beside the DGSS splits: name -> (full split's name, subset file).
SUBSETS: dict[str, tuple[str, str]] = {
    "dg_cityscapes_train_1_16": ("dg_cityscapes_train", "cityscapes_train_1_16.txt"),
}


def load_subset(name: str, spec: DGDataset, root: Path, subset_file: Path) -> list[dict]:
    """The records of `spec`'s split that `subset_file` lists, named `name`."""
    records = select_subset(load_dg_dataset(spec, root), subset_file, root / spec.image_dir, spec.image_suffix)
    return [dict(record, dataset_name=name) for record in records]
