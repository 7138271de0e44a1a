"""ACDC: checks (or creates) gt/<condition>/<split>/.../<id>_gt_labelTrainIds.png.

ACDC ships train-id labels; each is checked (present, same size as its image, valid
values). Where only <id>_gt_labelIds.png is present, it is converted with the Cityscapes
id -> train id table. The test split has no public labels: its images are only counted.
Usage: python datasets/prepare_acdc.py [--root acdc] [--conditions night snow fog rain]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rein_d2.data.catalog import ACDC_CONDITIONS, DGSS_CLASSES
from rein_d2.data.label_io import image_size, read_ids
from rein_d2.data.label_maps import CITYSCAPES_ID_TO_TRAIN_ID, make_lut
from rein_d2.data.prepare_utils import (LabelJob, PrepareError, convert_label, files_with_suffix,
                                        main_guard, prepare_parser, read_checked_train_ids,
                                        require_dir, run_jobs)

IMAGE_SUFFIX = "_rgb_anon.png"
TRAIN_ID_SUFFIX = "_gt_labelTrainIds.png"
LABEL_ID_SUFFIX = "_gt_labelIds.png"
LUT = make_lut(CITYSCAPES_ID_TO_TRAIN_ID)


def to_train_ids(path: Path) -> np.ndarray:
    """Cityscapes label ids -> train ids."""
    return LUT[read_ids(path)]


def prepare(job: tuple[Path, Path, bool]) -> str:
    """Check an image's train-id label, or create it from its label-id file."""
    image, label_stem, force = job
    train_ids = label_stem.with_name(label_stem.name + TRAIN_ID_SUFFIX)
    label_ids = label_stem.with_name(label_stem.name + LABEL_ID_SUFFIX)
    if train_ids.is_file() and not (force and label_ids.is_file()):
        read_checked_train_ids(train_ids, image_size(image), **DGSS_CLASSES.id_range())
        return "checked"
    if not label_ids.is_file():
        raise PrepareError(f"image {image} has neither {train_ids.name} nor {label_ids.name} "
                           f"in {train_ids.parent}: extract gt_trainval.zip into acdc/")
    return convert_label(LabelJob(label_ids, train_ids, image, force=True), to_train_ids, **DGSS_CLASSES.id_range())


def main(argv: list[str] | None = None) -> int:
    parser = prepare_parser(__doc__, "acdc")
    parser.add_argument("--conditions", nargs="+", default=list(ACDC_CONDITIONS))
    args = parser.parse_args(argv)

    def run() -> int:
        hint = "Extract rgb_anon_trainvaltest.zip and gt_trainval.zip into acdc/."
        jobs = []
        for cond in args.conditions:
            for split in ("train", "val"):
                images = require_dir(args.root / "rgb_anon" / cond / split,
                                     f"ACDC rgb_anon/{cond}/{split}", hint)
                labels = require_dir(args.root / "gt" / cond / split,
                                     f"ACDC gt/{cond}/{split}", hint)
                found = files_with_suffix(images, IMAGE_SUFFIX)
                if not found:
                    raise PrepareError(f"no *{IMAGE_SUFFIX} under {images.resolve()}. {hint}")
                jobs += [(image, labels / image.relative_to(images).with_name(
                    image.name[: -len(IMAGE_SUFFIX)]), args.force) for image in found]
            test = args.root / "rgb_anon" / cond / "test"
            count = len(files_with_suffix(test, IMAGE_SUFFIX)) if test.is_dir() else 0
            print(f"ACDC {cond} test: {count} images (no public labels: inference only)")
        return run_jobs(prepare, jobs, args.workers, "prepare_acdc")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
