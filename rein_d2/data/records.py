"""The records of any registered datasets, each naming the dataset it came from.

The training and test mappers and the evaluator look up a record's classes, ignore label and
test-time resize by its "dataset_name". rein-d2's own loaders set it; Detectron2's
`load_sem_seg` (ADE20K, a user's folder) and its Cityscapes loader do not. Both data loaders
of the trainer take their records from here, so every registered dataset works unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import ReinD2Error
from .dataset_classes import DatasetClasses
from .loader import DatasetLayoutError


def _load(name: str) -> list[dict]:
    """DatasetCatalog.get(name), with a loader's missing folder or failed check (Detectron2's
    loaders assert) turned into one message naming the dataset and the folders it reads."""
    DatasetClasses.of(name)  # an unregistered name fails here, with the close matches
    try:
        records = DatasetCatalog.get(name)
    except ReinD2Error:
        raise
    except (FileNotFoundError, AssertionError) as err:
        raise DatasetLayoutError(f"dataset '{name}' cannot be loaded: {err or type(err).__name__}\n"
                                 f"{_folders(name)}  see datasets/README.md for its layout") from err
    if not records:
        raise DatasetLayoutError(f"dataset '{name}' has no records\n{_folders(name)}  see datasets/README.md")
    return records


def _folders(name: str) -> str:
    meta = MetadataCatalog.get(name)
    keys = ("image_root", "sem_seg_root", "image_dir", "gt_dir")
    return "".join(f"  {key}: {meta.get(key)}\n" for key in keys if meta.get(key) is not None)


def dataset_records(names: str | Sequence[str]) -> list[dict]:
    """The records of `names` in order, each with "dataset_name" set to the dataset it was loaded from."""
    names = [names] if isinstance(names, str) else list(names)
    return [{**record, "dataset_name": name} for name in names for record in _load(name)]
