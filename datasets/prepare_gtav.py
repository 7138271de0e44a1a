"""GTAV: raw label ids -> gta/labels/<id>_labelTrainIds.png (19 Cityscapes train ids).

GTAV labels are palette PNGs whose indices are Cityscapes label ids. A few labels are
not the size of their image; their train-id map is resized (nearest) to the image, so
that every pair lines up. Usage: python datasets/prepare_gtav.py [--root gta] [--workers N]
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.label_io import read_ids
from rein_d2.data.label_maps import CITYSCAPES_ID_TO_TRAIN_ID, make_lut
from rein_d2.data.prepare_utils import (PrepareError, convert_label, main_guard, prepare_parser, require_dir, run_jobs,
                                        sibling_label_jobs)

OUT_SUFFIX = "_labelTrainIds.png"
LUT = make_lut(CITYSCAPES_ID_TO_TRAIN_ID)


def to_train_ids(path: Path) -> np.ndarray:
    """Palette indices (Cityscapes label ids) -> train ids."""
    ids = read_ids(path)
    if ids.dtype != np.uint8:
        raise PrepareError(f"label {path} holds {ids.dtype} values: expected 8-bit label ids")
    return LUT[ids]


def main(argv: list[str] | None = None) -> int:
    args = prepare_parser(__doc__, "gta").parse_args(argv)

    def run() -> int:
        hint = "Extract the GTAV image and label packages there (see datasets/README.md)."
        labels_dir = require_dir(args.root / "labels", "GTAV label folder", hint)
        images_dir = require_dir(args.root / "images", "GTAV image folder", hint)
        jobs = sibling_label_jobs(labels_dir, images_dir, OUT_SUFFIX, args.force, hint)
        work = functools.partial(convert_label, to_train_ids=to_train_ids, resize_to_image=True,
                                 **DGSS_CLASSES.id_range())
        return run_jobs(work, jobs, args.workers, "prepare_gtav")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
