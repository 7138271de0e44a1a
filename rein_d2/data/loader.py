"""The one loader behind every registered DGSS split: scan the disk, pair images with labels."""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import ReinD2Error
from .catalog import DGDataset
from .label_io import decoded_image_size

logger = logging.getLogger(__name__)
# Header reads wait on the disk, not the CPU: threads overlap them (e.g. 25k GTAV files).
HEADER_READ_THREADS = 16


class DatasetLayoutError(ReinD2Error, FileNotFoundError):
    """A dataset folder is missing, empty or not prepared."""


def datasets_root() -> Path:
    """$DETECTRON2_DATASETS, or ./datasets like Detectron2's own builtin datasets."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def _layout_error(spec: DGDataset, root: Path, problem: str) -> DatasetLayoutError:
    pattern = "\n".join(f"    {line}" for line in spec.layout().splitlines())
    return DatasetLayoutError(
        f"dataset '{spec.name}': {problem}\n"
        f"  expected under $DETECTRON2_DATASETS (now {root.resolve()}):\n{pattern}\n"
        f"  download: {spec.source}\n"
        f"  then run: {spec.prepare}   (see datasets/README.md)")


def walk_stems(folder: Path, prefix: str, suffix: str):
    """(sub folder, id) of every non-hidden file named <prefix><id><suffix>, sorted."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        sub = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            if (not name.startswith(".") and name.startswith(prefix) and name.endswith(suffix)
                    and len(name) > len(prefix) + len(suffix)):
                yield sub, name[len(prefix):len(name) - len(suffix)]


def add_image_sizes(records: list[dict]) -> list[dict]:
    """Set "height" and "width" of each record from its image header, as Detectron2's
    aspect-ratio grouping and evaluators expect of every record."""
    start = time.perf_counter()
    with ThreadPoolExecutor(HEADER_READ_THREADS) as pool:
        sizes = pool.map(decoded_image_size, [r["file_name"] for r in records])
        for record, (width, height) in zip(records, sizes):
            record["width"], record["height"] = width, height
    logger.info("read the sizes of %d images in %.1f s", len(records), time.perf_counter() - start)
    return records


def load_dg_dataset(spec: DGDataset, root: str | Path) -> list[dict]:
    """Detectron2 records: file_name, height, width, sem_seg_file_name (if labelled), dataset_name."""
    root = Path(root)
    image_dir = root / spec.image_dir
    label_dir = None if spec.label_dir is None else root / spec.label_dir
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        if folder is not None and not folder.is_dir():
            raise _layout_error(spec, root, f"{what} folder not found: {folder.resolve()}")

    records, missing = [], []
    for sub, stem in walk_stems(image_dir, spec.image_prefix, spec.image_suffix):
        image = image_dir / sub / f"{spec.image_prefix}{stem}{spec.image_suffix}"
        record = {"file_name": str(image), "dataset_name": spec.name}
        if label_dir is not None:
            label = label_dir / sub / f"{spec.label_prefix}{stem}{spec.label_suffix}"
            if not label.is_file():
                missing.append(label)
            record["sem_seg_file_name"] = str(label)
        records.append(record)

    if not records:
        raise _layout_error(spec, root, f"no image named {spec.image_prefix}<id>"
                            f"{spec.image_suffix} in {image_dir.resolve()}")
    if missing:
        raise _layout_error(spec, root, f"{len(missing)} of {len(records)} images have no "
                            f"label, e.g. {missing[0].resolve()} (labels not prepared yet?)")
    return add_image_sizes(records)
