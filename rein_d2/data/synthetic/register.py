"""Registers the synthetic benchmark in Detectron2's catalogs; data is generated on first use."""
from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from ..loader import datasets_root
from ..register import EVALUATOR_TYPE, register_split
from .classes import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, SYNTHETIC_IGNORE_LABEL
from .domains import SOURCE_DOMAIN, TARGET_DOMAINS
from .generate import HEIGHT, PREFIX, WIDTH, SplitSpec, ensure_split


def synthetic_root(root: str | Path | None = None) -> Path:
    """`root`, or $DETECTRON2_DATASETS/synthetic_dg."""
    return datasets_root() / PREFIX if root is None else Path(root)


def synthetic_class_metadata() -> dict:
    """The benchmark's own classes (see classes.py), as every split's MetadataCatalog entry carries them."""
    return {"stuff_classes": list(SYNTHETIC_CLASSES), "stuff_colors": [list(c) for c in SYNTHETIC_COLORS],
            "ignore_label": SYNTHETIC_IGNORE_LABEL, "evaluator_type": EVALUATOR_TYPE}


def synthetic_splits(*, height: int = HEIGHT, width: int = WIDTH, train_count: int = 200,
                     val_count: int = 50, seed: int = 0,
                     domains: Iterable[str] = TARGET_DOMAINS) -> list[SplitSpec]:
    """Source train and val, then one val split per target domain (same scenes as source val)."""
    size = dict(height=height, width=width, seed=seed)
    return ([SplitSpec(SOURCE_DOMAIN, "train", train_count, **size),
             SplitSpec(SOURCE_DOMAIN, "val", val_count, **size)]
            + [SplitSpec(domain, "val", val_count, **size) for domain in domains])


def register_synthetic_dg(root: str | Path | None = None, *, height: int = HEIGHT, width: int = WIDTH,
                          train_count: int = 200, val_count: int = 50, seed: int = 0,
                          domains: Iterable[str] = TARGET_DOMAINS) -> list[str]:
    """Register `synthetic_dg_source_{train,val}` and `synthetic_dg_<domain>_val`; return the names.

    Nothing is generated here: a split is rendered (with a progress bar) and cached
    under `root` the first time its records are requested. Calling again replaces the
    registrations made by an earlier call (e.g. with other sizes).
    """
    root = synthetic_root(root)
    names = []
    for spec in synthetic_splits(height=height, width=width, train_count=train_count,
                                 val_count=val_count, seed=seed, domains=domains):
        metadata = dict(synthetic_class_metadata(), domain=spec.domain, image_root=str(root / spec.folder / "images"),
                        sem_seg_root=str(root / spec.folder / "labels"), test_scale=None)
        register_split(spec.name, functools.partial(ensure_split, spec, root), metadata)
        names.append(spec.name)
    return names
