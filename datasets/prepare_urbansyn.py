"""UrbanSyn: ss/ss_<id>.png -> ss/ss_<id>_labelTrainIds.png.

UrbanSyn's grey-level labels already use the 19 Cityscapes train ids; every other value
(its "unlabeled" class) becomes the ignore label 255. Each label is checked against its
image rgb/rgb_<id>.png. Usage: python datasets/prepare_urbansyn.py [--root urbansyn]
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.label_io import read_ids
from rein_d2.data.label_maps import make_lut
from rein_d2.data.prepare_utils import (LabelJob, PrepareError, convert_label, files_with_suffix,
                                        main_guard, prepare_parser, require_dir, run_jobs)

OUT_SUFFIX = "_labelTrainIds.png"
LUTS = {np.dtype(t): make_lut({i: i for i in range(DGSS_CLASSES.num_classes)}, t)
        for t in (np.uint8, np.uint16)}


def to_train_ids(path: Path) -> np.ndarray:
    """Train ids kept, anything else -> 255."""
    ids = read_ids(path)
    if ids.dtype not in LUTS:
        raise PrepareError(f"label {path} holds {ids.dtype} values: expected 8 or 16-bit ids")
    return LUTS[ids.dtype][ids]


def main(argv: list[str] | None = None) -> int:
    args = prepare_parser(__doc__, "urbansyn").parse_args(argv)

    def run() -> int:
        hint = "Extract UrbanSyn's rgb/ and ss/ folders there."
        labels_dir = require_dir(args.root / "ss", "UrbanSyn label folder", hint)
        images_dir = require_dir(args.root / "rgb", "UrbanSyn image folder", hint)
        sources = [p for p in files_with_suffix(labels_dir, ".png", exclude=OUT_SUFFIX)
                   if p.name.startswith("ss_")]
        if not sources:
            raise PrepareError(f"no ss_<id>.png in {labels_dir.resolve()}. {hint}")
        jobs = [LabelJob(src, src.with_name(src.stem + OUT_SUFFIX),
                         images_dir / src.relative_to(labels_dir).with_name("rgb_" + src.name[3:]),
                         args.force) for src in sources]
        work = functools.partial(convert_label, to_train_ids=to_train_ids, **DGSS_CLASSES.id_range())
        return run_jobs(work, jobs, args.workers, "prepare_urbansyn")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
