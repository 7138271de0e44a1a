"""Mapillary Vistas v1.2: 66 classes -> 19 train ids, plus the half-resolution val set.

  training/v1.2/labels/<id>.png   -> cityscapes_trainIdLabel/train/label/<id>.png
  validation/v1.2/labels/<id>.png -> cityscapes_trainIdLabel/val/label/<id>.png
                                     and half/val_label/<id>.png (nearest, size // 2)
  validation/images/<id>.jpg      -> half/val_img/<id>.jpg (bicubic, size // 2)

The official DGSS protocol scores Mapillary validation at half resolution; the half
images are saved as JPEG with Pillow's default quality, as the official script does.
Usage: python datasets/prepare_mapillary.py [--root mapillary] [--workers N]
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.label_io import image_size, read_ids
from rein_d2.data.label_maps import MAPILLARY_V12_NUM_IDS, MAPILLARY_V12_TO_TRAIN_ID, make_lut
from rein_d2.data.prepare_utils import (LabelJob, PrepareError, convert_label, files_with_suffix,
                                        is_complete, main_guard, prepare_parser, require_dir,
                                        run_jobs, write_image, write_train_ids)

LUT = make_lut(MAPILLARY_V12_TO_TRAIN_ID)


def to_train_ids(path: Path) -> np.ndarray:
    """Mapillary v1.2 palette indices (0..65) -> train ids."""
    ids = read_ids(path)
    if ids.dtype != np.uint8 or int(ids.max()) >= MAPILLARY_V12_NUM_IDS:
        raise PrepareError(f"label {path} has ids up to {int(ids.max())}: expected Mapillary "
                           f"v1.2 ids 0..{MAPILLARY_V12_NUM_IDS - 1} (a v2.0 label?)")
    return LUT[ids]


@dataclass(frozen=True)
class ValJob:
    """A validation pair -> full-resolution train ids and the half-resolution pair."""

    label: Path
    image: Path
    full_label: Path
    half_label: Path
    half_image: Path
    force: bool = False


def prepare_val(job: ValJob) -> str:
    """Skip a complete pair, else write the three outputs of one validation image."""
    if not job.image.is_file():
        raise PrepareError(f"label {job.label} has no image {job.image}")
    size = image_size(job.image)
    half = (size[0] // 2, size[1] // 2)
    if not job.force and is_complete(job.full_label, size) and is_complete(
            job.half_label, half) and is_complete(job.half_image, half):
        return "skipped"
    labels = to_train_ids(job.label)
    if (labels.shape[1], labels.shape[0]) != size:
        raise PrepareError(f"label {job.label} is {labels.shape[1]}x{labels.shape[0]} but its "
                           f"image {job.image} is {size[0]}x{size[1]}")
    write_train_ids(job.full_label, labels, job.label, **DGSS_CLASSES.id_range())
    write_train_ids(job.half_label, np.asarray(Image.fromarray(labels).resize(half, Image.NEAREST)),
                    job.label, **DGSS_CLASSES.id_range())
    with Image.open(job.image) as image:
        write_image(job.half_image, np.asarray(image.convert("RGB").resize(half, Image.BICUBIC)))
    return "written"


def main(argv: list[str] | None = None) -> int:
    args = prepare_parser(__doc__, "mapillary").parse_args(argv)

    def run() -> int:
        root, hint = args.root, "Extract Mapillary Vistas (with its v1.2 labels) there."
        folders = {split: (require_dir(root / split / "images", f"Mapillary {split}/images", hint),
                           require_dir(root / split / "v1.2" / "labels",
                                       f"Mapillary {split}/v1.2/labels", hint))
                   for split in ("training", "validation")}
        out = root / "cityscapes_trainIdLabel"
        images, labels = folders["training"]
        train_jobs = [LabelJob(src, out / "train" / "label" / src.name,
                               images / f"{src.stem}.jpg", args.force)
                      for src in files_with_suffix(labels, ".png")]
        images, labels = folders["validation"]
        val_jobs = [ValJob(src, images / f"{src.stem}.jpg", out / "val" / "label" / src.name,
                           root / "half" / "val_label" / src.name,
                           root / "half" / "val_img" / f"{src.stem}.jpg", args.force)
                    for src in files_with_suffix(labels, ".png")]
        if not train_jobs or not val_jobs:
            raise PrepareError(f"no label PNG in {root.resolve()}/{{training,validation}}/v1.2/"
                               f"labels. {hint}")
        convert = functools.partial(convert_label, to_train_ids=to_train_ids, **DGSS_CLASSES.id_range())
        code = run_jobs(convert, train_jobs, args.workers, "prepare_mapillary train")
        return max(code, run_jobs(prepare_val, val_jobs, args.workers, "prepare_mapillary val"))

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
