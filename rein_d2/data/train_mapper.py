"""Training mapper with the official Rein augmentations, for any mix of source datasets.

Random shortest edge (INPUT.MIN_SIZE_TRAIN, choice; capped by INPUT.MAX_SIZE_TRAIN), random
crop retried until no class covers more than INPUT.CROP.SINGLE_CATEGORY_MAX_AREA (MMSeg's
cat_max_ratio), flip (INPUT.RANDOM_FLIP), photometric distortion (INPUT.COLOR_AUG_SSD), then
padding to INPUT.SIZE_DIVISIBILITY (the crop size) with the ignore label, as Mask2Former's
semantic mapper does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T
from detectron2.data.detection_utils import check_image_size

from ..errors import ConfigError
from .classes import IGNORE_LABEL
from .label_io import LabelError, read_train_ids
from .photometric import PhotometricDistortion
from .test_mapper import read_image_checked

FLIPS = ("horizontal", "vertical", "none")  # Detectron2's INPUT.RANDOM_FLIP values
IMAGE_PAD_VALUE = 128  # Mask2Former's; padded pixels carry the ignore label anyway


def build_train_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    augs: list[T.Augmentation] = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                                       cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
                                                         cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, IGNORE_LABEL))
    if cfg.INPUT.RANDOM_FLIP not in FLIPS:
        raise ConfigError(f"INPUT.RANDOM_FLIP={cfg.INPUT.RANDOM_FLIP!r}; choose one of {', '.join(FLIPS)}")
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    if cfg.INPUT.COLOR_AUG_SSD:
        augs.append(PhotometricDistortion(cfg.INPUT.FORMAT))
    return augs


class SemanticTrainMapper:
    """Dataset record -> {"image": CHW uint8, "sem_seg": HW long, ...} for MaskFormer training."""

    @configurable
    def __init__(self, *, augmentations: list[T.Augmentation], image_format: str = "RGB",
                 size_divisibility: int = -1) -> None:
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(augmentations=build_train_augmentations(cfg), image_format=cfg.INPUT.FORMAT,
                    size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY)

    def _pad(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size_divisibility <= 0:
            return image, label
        h, w = label.shape
        d = self.size_divisibility
        pad = (0, (d - w % d) % d, 0, (d - h % d) % d)
        return F.pad(image, pad, value=IMAGE_PAD_VALUE), F.pad(label, pad, value=IGNORE_LABEL)

    def __call__(self, record: dict) -> dict:
        if "sem_seg_file_name" not in record:
            raise ConfigError(f"training record of {record.get('file_name')} has no 'sem_seg_file_name': "
                           "training needs a labelled split")
        out = {k: v for k, v in record.items() if k not in ("image", "sem_seg")}
        image = read_image_checked(record["file_name"], self.image_format)
        check_image_size(out, image)  # sets height/width when the record has none
        label = read_train_ids(record["sem_seg_file_name"]).astype(np.uint8)
        if label.shape != image.shape[:2]:
            raise LabelError(f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} but its label "
                             f"{record['sem_seg_file_name']} is {label.shape[1]}x{label.shape[0]}; "
                             "re-run the dataset's prepare script")
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        label_t = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        image_t, label_t = self._pad(image_t, label_t)
        out.update(image=image_t, sem_seg=label_t)
        return out
