"""SYNTHIA-RAND-CITYSCAPES: GT/LABELS/<id>.png -> GT/LABELS/<id>_labelTrainIds.png.

The labels are 16-bit 3-channel PNGs whose first (red) channel holds the SYNTHIA class
id and the second the instance id. Usage: python datasets/prepare_synthia.py [--root synthia]
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import cv2
import numpy as np

from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.label_maps import SYNTHIA_ID_TO_TRAIN_ID, make_lut
from rein_d2.data.prepare_utils import (PrepareError, convert_label, main_guard, prepare_parser, require_dir, run_jobs,
                                        sibling_label_jobs)

OUT_SUFFIX = "_labelTrainIds.png"
LUTS = {np.dtype(t): make_lut(SYNTHIA_ID_TO_TRAIN_ID, t) for t in (np.uint8, np.uint16)}


def to_train_ids(path: Path) -> np.ndarray:
    """The class-id channel (OpenCV reads BGR, so red is the last) -> train ids."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise PrepareError(f"cannot read label {path}: re-extract SYNTHIA-RAND-CITYSCAPES")
    ids = raw[:, :, 2] if raw.ndim == 3 else raw
    if ids.dtype not in LUTS:
        raise PrepareError(f"label {path} holds {ids.dtype} values: expected 16-bit ids")
    return LUTS[ids.dtype][ids]


def main(argv: list[str] | None = None) -> int:
    args = prepare_parser(__doc__, "synthia").parse_args(argv)

    def run() -> int:
        hint = "Extract SYNTHIA-RAND-CITYSCAPES there (RGB/ and GT/LABELS/)."
        labels_dir = require_dir(args.root / "GT" / "LABELS", "SYNTHIA label folder", hint)
        images_dir = require_dir(args.root / "RGB", "SYNTHIA image folder", hint)
        jobs = sibling_label_jobs(labels_dir, images_dir, OUT_SUFFIX, args.force, hint)
        work = functools.partial(convert_label, to_train_ids=to_train_ids, **DGSS_CLASSES.id_range())
        return run_jobs(work, jobs, args.workers, "prepare_synthia")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
