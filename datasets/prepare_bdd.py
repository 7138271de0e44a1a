"""BDD100K: checks the 10K semantic-segmentation masks (they need no conversion).

The masks already hold the 19 Cityscapes train ids and 255. Every image of
images/10k/<split>/<id>.jpg must have labels/sem_seg/masks/<split>/<id>.png of the same
size with valid values. Usage: python datasets/prepare_bdd.py [--root bdd100k]
"""
from __future__ import annotations

import sys
from pathlib import Path

from rein_d2.data.catalog import DGSS_CLASSES
from rein_d2.data.label_io import image_size
from rein_d2.data.prepare_utils import (PrepareError, files_with_suffix, main_guard,
                                        prepare_parser, read_checked_train_ids, require_dir,
                                        run_jobs)


def check(job: tuple[Path, Path]) -> str:
    """One image and its mask: present, same size, valid values."""
    image, mask = job
    if not mask.is_file():
        raise PrepareError(f"image {image} has no mask {mask}: extract the BDD100K "
                           "semantic segmentation labels")
    read_checked_train_ids(mask, image_size(image), **DGSS_CLASSES.id_range())
    return "checked"


def main(argv: list[str] | None = None) -> int:
    parser = prepare_parser(__doc__, "bdd100k")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)

    def run() -> int:
        jobs = []
        for split in args.splits:
            hint = "Extract the BDD100K 10K images and sem_seg labels into bdd100k/."
            images = require_dir(args.root / "images" / "10k" / split,
                                 f"BDD100K images/10k/{split}", hint)
            masks = require_dir(args.root / "labels" / "sem_seg" / "masks" / split,
                                f"BDD100K labels/sem_seg/masks/{split}", hint)
            found = files_with_suffix(images, ".jpg")
            if not found:
                raise PrepareError(f"no .jpg image in {images.resolve()}. {hint}")
            jobs += [(image, masks / image.relative_to(images).with_suffix(".png"))
                     for image in found]
        return run_jobs(check, jobs, args.workers, "prepare_bdd")

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
