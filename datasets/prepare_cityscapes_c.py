"""Cityscapes-C: Cityscapes val under 16 corruptions x 5 severities, cached on disk.

Corrupts cityscapes/leftImg8bit/val with the `imagecorruptions` package into
cityscapes-c/<corruption>/<severity>/leftImg8bit/val/<city>/<name>_leftImg8bit.png
(lossless PNG). The labels are Cityscapes' own gtFine/val (run prepare_cityscapes.py).
Every image gets a fixed seed from its name, corruption and severity, so a re-run
makes the same images. The paper reports severity 5.
Usage: python datasets/prepare_cityscapes_c.py [--severities 5] [--corruptions fog snow]
"""
from __future__ import annotations

import inspect
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rein_d2.data.catalog import CITYSCAPES_C_CORRUPTIONS, CITYSCAPES_C_SEVERITIES
from rein_d2.data.label_io import image_size
from rein_d2.data.loader import datasets_root
from rein_d2.data.prepare_utils import (PrepareError, files_with_suffix, is_complete, main_guard,
                                        prepare_parser, require_dir, run_jobs, write_image)

IMAGE_SUFFIX = "_leftImg8bit.png"


def corruption_functions() -> dict:
    """imagecorruptions' functions by name, or an error saying how to install it."""
    try:
        from imagecorruptions import corruption_dict
    except ImportError as e:
        raise PrepareError("Cityscapes-C needs the imagecorruptions package: "
                           "pip install --no-deps imagecorruptions-imaug (its imports, numba and scikit-image, come with rein-d2)") from e
    return corruption_dict


def seed_of(name: str, corruption: str, severity: int) -> int:
    """A fixed 31-bit seed per image, corruption and severity."""
    return zlib.crc32(f"{name}|{corruption}|{severity}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class CorruptJob:
    """One clean image under one corruption, at the requested severities."""

    image: Path
    relative: Path  # <city>/<name>_leftImg8bit.png
    out_root: Path
    corruption: str
    severities: tuple[int, ...]
    force: bool = False

    def output(self, severity: int) -> Path:
        """Where this image is cached at `severity`."""
        folder = self.out_root / self.corruption / str(severity) / "leftImg8bit" / "val"
        return folder / self.relative


def corrupt_image(job: CorruptJob) -> str:
    """Write the missing severities of one image under one corruption."""
    size = image_size(job.image)
    todo = [s for s in job.severities if job.force or not is_complete(job.output(s), size)]
    if not todo:
        return "skipped"
    corrupt = corruption_functions()[job.corruption]
    takes_seed = "seed" in inspect.signature(corrupt).parameters
    with Image.open(job.image) as image:
        rgb = image.convert("RGB")
    for severity in todo:
        seed = seed_of(job.relative.as_posix(), job.corruption, severity)
        np.random.seed(seed)  # most corruptions draw from numpy's global generator
        out = corrupt(rgb, severity, seed=seed) if takes_seed else corrupt(rgb, severity)
        write_image(job.output(severity), np.uint8(out))
    return "written"


def main(argv: list[str] | None = None) -> int:
    parser = prepare_parser(__doc__, "cityscapes-c")
    parser.add_argument("--cityscapes", type=Path, default=datasets_root() / "cityscapes",
                        help="clean Cityscapes folder (default: $DETECTRON2_DATASETS/cityscapes)")
    parser.add_argument("--corruptions", nargs="+", default=list(CITYSCAPES_C_CORRUPTIONS),
                        choices=CITYSCAPES_C_CORRUPTIONS)
    parser.add_argument("--severities", nargs="+", type=int, default=list(CITYSCAPES_C_SEVERITIES),
                        choices=CITYSCAPES_C_SEVERITIES)
    args = parser.parse_args(argv)

    def run() -> int:
        corruption_functions()  # fail before scanning if the package is missing
        val = require_dir(args.cityscapes / "leftImg8bit" / "val", "Cityscapes leftImg8bit/val",
                          "Extract leftImg8bit_trainvaltest.zip into cityscapes/.")
        images = files_with_suffix(val, IMAGE_SUFFIX)
        if not images:
            raise PrepareError(f"no *{IMAGE_SUFFIX} under {val.resolve()}")
        jobs = [CorruptJob(image, image.relative_to(val), args.root, corruption,
                           tuple(args.severities), args.force)
                for corruption in args.corruptions for image in images]
        return run_jobs(corrupt_image, jobs, args.workers, "prepare_cityscapes_c")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
