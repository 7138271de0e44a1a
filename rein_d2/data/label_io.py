"""Reading label maps and image headers with errors that name the file and the fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ReinD2Error


class LabelError(ReinD2Error, ValueError):
    """A label file that is missing, unreadable or not a map of its dataset's train ids."""


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse); the
# decoder (Detectron2's read_image) applies them, so the decoded size is the swapped one.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def _header(path: str | Path) -> tuple[tuple[int, int], int | None]:
    """((width, height), EXIF orientation or None) from the file header, pixels not decoded."""
    try:
        with Image.open(path) as image:
            return image.size, image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError) as e:
        raise LabelError(f"cannot read the image header of {path}: {e}. Re-extract or "
                         "re-download this file, or re-run the dataset's prepare script.") from e


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as stored in the file header, without decoding the pixels."""
    return _header(path)[0]


def decoded_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image as Detectron2's read_image returns it (EXIF orientation
    applied), from the file header and EXIF block only, without decoding the pixels."""
    (width, height), orientation = _header(path)
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def read_ids(path: str | Path) -> np.ndarray:
    """A single-channel id image (palette indices for palette PNGs, never colours)."""
    try:
        with Image.open(path) as image:
            ids = np.asarray(image)
    except (OSError, ValueError) as e:
        raise LabelError(f"cannot read label {path}: {e}. Re-extract or re-download this "
                         "file, or re-run the dataset's prepare script.") from e
    if ids.ndim != 2:
        raise LabelError(f"label {path} has shape {ids.shape}: expected one channel of ids "
                         "(a colour visualisation is not a label).")
    return ids


def check_train_ids(labels: np.ndarray, path: str | Path, *, num_classes: int,
                    ignore_label: int) -> np.ndarray:
    """Raise unless every value is a train id (0..num_classes-1) or the ignore label."""
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10])
        raise LabelError(
            f"label {path} contains value(s) {shown}, outside the train ids 0..{num_classes - 1} of "
            f"its dataset's {num_classes} classes and the ignore label {ignore_label}. It is not a "
            "train-id label of this dataset: run the dataset's prepare script (see datasets/README.md) "
            "and point to its output, or check the classes registered for it (its MetadataCatalog "
            "stuff_classes).")
    return labels


def read_train_ids(path: str | Path, *, num_classes: int, ignore_label: int) -> np.ndarray:
    """A validated train-id label map."""
    return check_train_ids(read_ids(path), path, num_classes=num_classes, ignore_label=ignore_label)
