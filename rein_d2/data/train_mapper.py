"""Training mapper with the official Rein training pipeline (MMSeg 1.x), for any mix of source datasets.

Sample for sample what MMSeg makes of the same image, label and random numbers: a random
shortest edge (INPUT.MIN_SIZE_TRAIN, capped by INPUT.MAX_SIZE_TRAIN) resized with cv2, a
random crop retried while one class covers INPUT.CROP.SINGLE_CATEGORY_MAX_AREA (MMSeg's
cat_max_ratio) or more, flip (INPUT.RANDOM_FLIP), photometric distortion (INPUT.COLOR_AUG_SSD),
then padding at the bottom and right to INPUT.SIZE_DIVISIBILITY (the crop size): labels with
the ignore label, images with MODEL.PIXEL_MEAN, which the model's normalisation turns into
exactly 0, as MMSeg's SegDataPreProcessor pads the normalised image with 0. Padding here
rather than in the model keeps every batch at the crop size, whatever its crops.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T
from detectron2.data.detection_utils import check_image_size

from ..errors import ConfigError
from .classes import IGNORE_LABEL
from .label_io import LabelError, read_train_ids
from .official_augmentations import RandomCropCatMaxRatio, RandomShortestEdge
from .photometric import PhotometricDistortion
from .test_mapper import read_image_checked

FLIPS = ("horizontal", "vertical", "none")  # Detectron2's INPUT.RANDOM_FLIP values


def build_train_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """MMSeg's order: resize, crop, flip, photometric distortion."""
    augs: list[T.Augmentation] = [RandomShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                                     cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(RandomCropCatMaxRatio(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
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
    """Dataset record -> {"image": CHW float32, "sem_seg": HW long, ...} for MaskFormer training."""

    @configurable
    def __init__(self, *, augmentations: list[T.Augmentation], pixel_mean: Sequence[float],
                 image_format: str = "RGB", size_divisibility: int = -1) -> None:
        """pixel_mean: the model's MODEL.PIXEL_MEAN, the value of padded pixels (0 once normalised)."""
        self.augmentations = T.AugmentationList(augmentations)
        self.pad_value = torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.image_format = image_format
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(augmentations=build_train_augmentations(cfg), pixel_mean=cfg.MODEL.PIXEL_MEAN,
                    image_format=cfg.INPUT.FORMAT, size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY)

    def _pad(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size_divisibility <= 0:
            return image, label
        h, w = label.shape
        d = self.size_divisibility
        padded_h, padded_w = -(-h // d) * d, -(-w // d) * d
        padded = self.pad_value.expand(image.shape[0], padded_h, padded_w).clone()
        padded[:, :h, :w] = image
        return padded, F.pad(label, (0, padded_w - w, 0, padded_h - h), value=IGNORE_LABEL)

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
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))).float()
        label_t = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        image_t, label_t = self._pad(image_t, label_t)
        out.update(image=image_t, sem_seg=label_t)
        return out
