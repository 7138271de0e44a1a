"""Test-time mapper: read, resize by the dataset's official rule, keep the label's size.

The model resizes its prediction to the returned height/width, so scores are computed at
the label's original resolution, as in the official evaluation.

The rule is the dataset's `test_scale` metadata (the DGSS datasets: fit in a box, None for
as is). Datasets without that key (Detectron2's builtin ones such as `ade20k_sem_seg_val`
or `cityscapes_fine_sem_seg_val`, a user's own) follow Detectron2's own test resize: the
short side to INPUT.MIN_SIZE_TEST, the long side at most INPUT.MAX_SIZE_TEST (MIN_SIZE_TEST 0:
as is), which are also the demo's.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

from ..errors import ConfigError, ReinD2Error
from .label_io import image_size

# The official test scales belong to the 512-crop configs; the 1024-crop configs use
# twice those scales (Cityscapes 2048x1024, ACDC 1920x1080).
REFERENCE_CROP = 512


class ImageReadError(ReinD2Error, OSError):
    """An image file that cannot be decoded."""


def fit_in(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(height, width) scaled, ratio kept, so the long side <= max(scale) and the short
    side <= min(scale), touching one of them (MMSeg/mmcv keep-ratio rescale, rounded)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def read_image_checked(path: str, image_format: str) -> np.ndarray:
    """HWC uint8 image in `image_format` (e.g. RGB or BGR), or an error naming the file."""
    try:
        return read_image(path, format=image_format)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}. Re-extract or re-download it "
                             "(or re-run the dataset's prepare script).") from e


class DGTestDatasetMapper:
    """Record -> model input, resized by its dataset's `test_scale` metadata (else INPUT.MIN_SIZE_TEST)."""

    @configurable
    def __init__(self, *, image_format: str = "RGB", scale_multiplier: float = 1.0,
                 min_size: int = 0, max_size: int = 0):
        """`scale_multiplier` scales every dataset's test_scale (2.0 for 1024-crop configs);
        `min_size` / `max_size` resize the images of datasets without one (0: as is)."""
        self.image_format = image_format
        self.scale_multiplier = scale_multiplier
        self.min_size = min_size
        self.max_size = max_size

    @classmethod
    def from_config(cls, cfg) -> dict:
        slide = cfg.TEST.get("SLIDE")
        crop = slide.CROP_SIZE[0] if slide is not None else REFERENCE_CROP
        return {"image_format": cfg.INPUT.FORMAT, "scale_multiplier": crop / REFERENCE_CROP,
                "min_size": cfg.INPUT.MIN_SIZE_TEST, "max_size": cfg.INPUT.MAX_SIZE_TEST}

    def target_size(self, dataset_name: str, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of this dataset."""
        meta = MetadataCatalog.get(dataset_name)
        if "test_scale" in meta.as_dict():  # a DGSS dataset: its official rule
            scale = meta.test_scale
            if scale is None:
                return height, width
            scaled = (round(scale[0] * self.scale_multiplier), round(scale[1] * self.scale_multiplier))
            return fit_in(height, width, scaled)
        if self.min_size <= 0:
            return height, width
        return T.ResizeShortestEdge.get_output_shape(height, width, self.min_size, self.max_size or sys.maxsize)

    def __call__(self, record: dict) -> dict:
        if "dataset_name" not in record:
            raise ConfigError(f"record of {record['file_name']} has no 'dataset_name': build the test "
                              "loader with rein_d2.evaluation.build_dg_test_loader (or take the records "
                              "from rein_d2.data.dataset_records), which names each record's dataset")
        image = read_image_checked(record["file_name"], self.image_format)
        height, width = image.shape[:2]
        new_h, new_w = self.target_size(record["dataset_name"], height, width)
        if (new_h, new_w) != (height, width):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        label = record.get("sem_seg_file_name")
        if label is not None:
            width, height = image_size(label)
        out = dict(record)
        out.update(image=torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                   height=height, width=width)
        return out
