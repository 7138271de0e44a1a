"""Cityscapes: gtFine *_gtFine_labelIds.png -> *_gtFine_labelTrainIds.png.

Uses the standard Cityscapes id -> train id table directly (no cityscapesscripts needed).
Usage: python datasets/prepare_cityscapes.py [--root cityscapes] [--splits train val]
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.label_io import read_ids
from rein_d2.data.label_maps import CITYSCAPES_ID_TO_TRAIN_ID, make_lut
from rein_d2.data.prepare_utils import (LabelJob, PrepareError, convert_label, files_with_suffix,
                                        main_guard, prepare_parser, require_dir, run_jobs)

IN_SUFFIX = "_gtFine_labelIds.png"
OUT_SUFFIX = "_gtFine_labelTrainIds.png"
LUT = make_lut(CITYSCAPES_ID_TO_TRAIN_ID)


def to_train_ids(path: Path) -> np.ndarray:
    """Cityscapes label ids -> train ids."""
    return LUT[read_ids(path)]


def main(argv: list[str] | None = None) -> int:
    parser = prepare_parser(__doc__, "cityscapes")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)

    def run() -> int:
        jobs = []
        for split in args.splits:
            folder = require_dir(args.root / "gtFine" / split, f"Cityscapes gtFine/{split}",
                                 "Extract gtFine_trainvaltest.zip into cityscapes/.")
            sources = files_with_suffix(folder, IN_SUFFIX)
            if not sources:
                raise PrepareError(f"no *{IN_SUFFIX} under {folder.resolve()}")
            jobs += [LabelJob(src, src.with_name(src.name[: -len(IN_SUFFIX)] + OUT_SUFFIX),
                              force=args.force) for src in sources]
        work = functools.partial(convert_label, to_train_ids=to_train_ids, **DGSS_CLASSES.id_range())
        return run_jobs(work, jobs, args.workers, "prepare_cityscapes")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
