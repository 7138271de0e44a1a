"""Training mapper with the official Rein training pipeline (MMSeg 1.x), for any mix of source datasets.

Sample for sample what MMSeg makes of the same image, label and random numbers: a random
shortest edge (INPUT.MIN_SIZE_TRAIN, capped by INPUT.MAX_SIZE_TRAIN) resized with cv2, a
random crop retried while one class covers INPUT.CROP.SINGLE_CATEGORY_MAX_AREA (MMSeg's
cat_max_ratio) or more, flip (INPUT.RANDOM_FLIP), photometric distortion (INPUT.COLOR_AUG_SSD),
then padding at the bottom and right to INPUT.SIZE_DIVISIBILITY (the crop size): labels with
the ignore label, images with MODEL.PIXEL_MEAN, which the model's normalisation turns into
exactly 0, as MMSeg's SegDataPreProcessor pads the normalised image with 0. Padding here
rather than in the model keeps every batch at the crop size, whatever its crops; each sample's
"unpadded_size" (h, w) says where its image ends. The DGSS augmentation baselines INPUT.GTR_LTR
and INPUT.PASTA, when enabled, come before this pipeline.

Each label is checked against the classes of its own dataset (its record's "dataset_name",
see records.py), and that dataset's ignore label becomes the model's
MODEL.SEM_SEG_HEAD.IGNORE_VALUE, so datasets with different ignore labels train together.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T
from detectron2.data.detection_utils import check_image_size

from ..errors import ConfigError
from .dataset_classes import DatasetClasses
from .label_io import LabelError
from .official_augmentations import RandomCropCatMaxRatio, RandomShortestEdge
from .pasta import PASTA
from .photometric import PhotometricDistortion
from .test_mapper import read_image_checked
from .texture_randomization import TextureRandomization

FLIPS = ("horizontal", "vertical", "none")  # Detectron2's INPUT.RANDOM_FLIP values


def build_dgss_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """The DGSS augmentation baselines that change the loaded image (INPUT.GTR_LTR, INPUT.PASTA), first
    in the pipeline: their papers' code applies them to the whole image, before resize, crop and colour."""
    augs: list[T.Augmentation] = []
    if cfg.INPUT.GTR_LTR.ENABLED:
        g = cfg.INPUT.GTR_LTR
        augs.append(TextureRandomization(g.TEXTURE_DIR, cfg.INPUT.FORMAT, g.GLOBAL_PROB, g.LOCAL_PROB,
                                         g.BLEND, g.LOCAL_AREA))
    if cfg.INPUT.PASTA.ENABLED:
        p = cfg.INPUT.PASTA
        augs.append(PASTA(p.ALPHA, p.BETA, p.K, p.PROB))
    return augs


def build_train_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """The DGSS baselines if enabled, then MMSeg's order: resize, crop, flip, photometric distortion
    (on labels whose ignore label is MODEL.SEM_SEG_HEAD.IGNORE_VALUE)."""
    augs = build_dgss_augmentations(cfg)
    augs.append(RandomShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                   cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING))
    if cfg.INPUT.CROP.ENABLED:
        augs.append(RandomCropCatMaxRatio(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
                                          cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                                          cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
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
    def __init__(self, *, augmentations: list[T.Augmentation], datasets: Mapping[str, DatasetClasses],
                 pixel_mean: Sequence[float], ignore_value: int = 255, image_format: str = "RGB",
                 size_divisibility: int = -1) -> None:
        """datasets: the classes of every dataset whose records this mapper takes, by name.
        pixel_mean: the model's MODEL.PIXEL_MEAN, the value of padded pixels (0 once normalised).
        ignore_value: the model's ignore label (MODEL.SEM_SEG_HEAD.IGNORE_VALUE) in the labels it returns."""
        if not 0 <= ignore_value <= 255 or any(c.num_classes > 255 for c in datasets.values()):
            raise ConfigError(f"the training mapper's labels are 8-bit: MODEL.SEM_SEG_HEAD.IGNORE_VALUE "
                              f"({ignore_value}) must be in 0..255 and every dataset have at most 255 classes")
        self.augmentations = T.AugmentationList(augmentations)
        self.datasets = dict(datasets)
        self.pad_value = torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1)
        self.ignore_value = ignore_value
        self.image_format = image_format
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return dict(augmentations=build_train_augmentations(cfg),
                    datasets={name: DatasetClasses.of(name) for name in cfg.DATASETS.TRAIN},
                    pixel_mean=cfg.MODEL.PIXEL_MEAN, ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    image_format=cfg.INPUT.FORMAT, size_divisibility=cfg.INPUT.SIZE_DIVISIBILITY)

    def _classes(self, record: dict) -> DatasetClasses:
        """The classes of the record's dataset (a record without a name belongs to the only one)."""
        only = next(iter(self.datasets)) if len(self.datasets) == 1 else None
        name = record.get("dataset_name", only)
        if name not in self.datasets:
            raise ConfigError(f"training record of {record.get('file_name')} comes from dataset {name!r}, not "
                              f"one of the mapper's datasets {list(self.datasets)}: build its records with "
                              "rein_d2.data.dataset_records(names), which names each record's dataset")
        return self.datasets[name]

    def _labels(self, record: dict) -> np.ndarray:
        """The record's label map, checked against its dataset's classes, with the model's ignore value."""
        classes = self._classes(record)
        label = classes.read_labels(record["sem_seg_file_name"])
        if classes.ignore_label != self.ignore_value:
            label = np.where(label == classes.ignore_label, self.ignore_value, label)
        return label.astype(np.uint8)

    def _pad(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.size_divisibility <= 0:
            return image, label
        h, w = label.shape
        d = self.size_divisibility
        padded_h, padded_w = -(-h // d) * d, -(-w // d) * d
        padded = self.pad_value.expand(image.shape[0], padded_h, padded_w).clone()
        padded[:, :h, :w] = image
        return padded, F.pad(label, (0, padded_w - w, 0, padded_h - h), value=self.ignore_value)

    def __call__(self, record: dict) -> dict:
        if "sem_seg_file_name" not in record:
            raise ConfigError(f"training record of {record.get('file_name')} has no 'sem_seg_file_name': "
                           "training needs a labelled split")
        out = {k: v for k, v in record.items() if k not in ("image", "sem_seg")}
        image = read_image_checked(record["file_name"], self.image_format)
        check_image_size(out, image)  # sets height/width when the record has none
        label = self._labels(record)
        if label.shape != image.shape[:2]:
            raise LabelError(f"image {record['file_name']} is {image.shape[1]}x{image.shape[0]} but its label "
                             f"{record['sem_seg_file_name']} is {label.shape[1]}x{label.shape[0]}; "
                             "re-run the dataset's prepare script")
        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image_t = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))).float()
        label_t = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        unpadded_size = tuple(label_t.shape)
        image_t, label_t = self._pad(image_t, label_t)
        out.update(image=image_t, sem_seg=label_t, unpadded_size=unpadded_size)
        return out
