"""Registers every row of the DGSS table in Detectron2's catalogs, without touching the disk."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import ConfigError
from .catalog import DG_DATASETS, DGSS_CLASSES, DGDataset
from .loader import datasets_root, load_dg_dataset
from .subsets import SPLITS_DIR, SUBSETS, load_subset

EVALUATOR_TYPE = "dg_sem_seg"
_REGISTERED: set[str] = set()


def class_metadata() -> dict:
    """The 19 Cityscapes classes every DGSS split is scored on, and its evaluator."""
    return {**DGSS_CLASSES.metadata(), "evaluator_type": EVALUATOR_TYPE}


def register_split(name: str, loader: Callable[[], list[dict]], metadata: dict) -> None:
    """Register (or re-register) a rein-d2 split; a name taken by another package is an error."""
    if name in DatasetCatalog:
        if name not in _REGISTERED:
            raise ConfigError(f"dataset name '{name}' is already registered by another package; "
                             "rein-d2 cannot register its split under that name")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    _REGISTERED.add(name)


def dg_metadata(spec: DGDataset, root: Path) -> dict:
    """What Detectron2's Metadata carries for one split (classes, colours, test resize)."""
    return {
        **class_metadata(),
        "image_root": str(root / spec.image_dir),
        "sem_seg_root": None if spec.label_dir is None else str(root / spec.label_dir),
        "test_scale": spec.test_scale,
        "domain": spec.domain,
        "prepare_command": spec.prepare,
    }


def register_dg_datasets(root: str | Path | None = None) -> None:
    """(Re-)register all DGSS splits under `root` (default: $DETECTRON2_DATASETS).

    Only names registered here are replaced; a name taken by someone else is an error.
    """
    root = datasets_root() if root is None else Path(root)
    for spec in DG_DATASETS:
        register_split(spec.name, functools.partial(load_dg_dataset, spec, root), dg_metadata(spec, root))
    specs = {spec.name: spec for spec in DG_DATASETS}
    for name, (full, subset_file) in SUBSETS.items():
        register_split(name, functools.partial(load_subset, name, specs[full], root, SPLITS_DIR / subset_file),
                       dg_metadata(specs[full], root))
