"""Resize and crop of the official Rein training pipeline (MMSeg 1.x on MMCV 2.x) as Detectron2 augmentations.

Detectron2's own augmentations differ from it in ways that change every training sample:
its resize uses PIL's bilinear filter (antialiased when shrinking) and PIL's nearest rule for
labels, and its category-constrained crop keeps the 10th rejected window. Here:

- `RandomShortestEdge` is MMCV's `RandomChoiceResize` over MMSeg's `ResizeShortestEdge`: the
  short edge is drawn by index (`np.random.randint(len(lengths))`), the target size is
  Detectron2's (= MMSeg's) shortest-edge rule, and MMCV's keep-ratio `Resize` then rescales
  by the largest factor that fits the image in that target, rounding each side with
  `int(x + 0.5)`; images by cv2 `INTER_LINEAR` (no antialias), labels by cv2 `INTER_NEAREST`.
- `RandomCropCatMaxRatio` is MMSeg's `RandomCrop(cat_max_ratio)`: a window, then up to ten
  checks, each failed check drawing a new window; the last one drawn is kept unchecked.

Both draw from numpy's global generator in MMSeg's order, so one seed gives one sample.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform

from ..errors import ConfigError

CROP_ATTEMPTS = 10  # checks before MMSeg's RandomCrop keeps its last window


def keep_ratio_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w): MMSeg's ResizeShortestEdge target, then MMCV's keep-ratio rescale into it."""
    target_h, target_w = T.ResizeShortestEdge.get_output_shape(height, width, short_edge, max_size)
    factor = min(max(target_h, target_w) / max(height, width), min(target_h, target_w) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class CV2ResizeTransform(Transform):
    """Resize to (new_h, new_w) with MMCV's cv2 filters: bilinear images, nearest labels."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h / self.h)
        return coords

    def inverse(self) -> Transform:
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


class RandomShortestEdge(T.Augmentation):
    """Short edge drawn from `lengths` ("choice") or uniformly in [min, max] ("range"), long edge <= max_size."""

    def __init__(self, lengths: Sequence[int], max_size: int, sample_style: str = "choice") -> None:
        super().__init__()
        if sample_style not in ("choice", "range"):
            raise ConfigError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING={sample_style!r}: choose 'choice' or 'range'")
        if sample_style == "range" and len(lengths) != 2:
            raise ConfigError(f"INPUT.MIN_SIZE_TRAIN={list(lengths)} must be [min, max] with sampling 'range'")
        self.lengths = [int(x) for x in lengths]
        self.max_size = max_size
        self.is_range = sample_style == "range"

    def _short_edge(self) -> int:
        if self.is_range:
            return int(np.random.randint(self.lengths[0], self.lengths[1] + 1))
        return self.lengths[np.random.randint(len(self.lengths))]

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        return CV2ResizeTransform(h, w, *keep_ratio_size(h, w, self._short_edge(), self.max_size))


class RandomCropCatMaxRatio(T.Augmentation):
    """A random window (size by Detectron2's INPUT.CROP.TYPE rule) in which no class covers
    `cat_max_ratio` or more of the labelled pixels and at least two classes appear, if one is
    found in ten checks; `cat_max_ratio` >= 1 takes the first window."""

    input_args = ("sem_seg",)  # what Detectron2 hands get_transform: the label alone decides

    def __init__(self, crop_type: str, crop_size: Sequence[float], cat_max_ratio: float, ignore_label: int) -> None:
        super().__init__()
        self.size_rule = T.RandomCrop(crop_type, crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_label = ignore_label

    def _window(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = self.size_rule.get_crop_size((h, w))
        return int(np.random.randint(h - ch + 1)), int(np.random.randint(w - cw + 1)), ch, cw

    def _balanced(self, labels: np.ndarray) -> bool:
        classes, counts = np.unique(labels, return_counts=True)
        counts = counts[classes != self.ignore_label]
        return len(counts) > 1 and np.max(counts) / np.sum(counts) < self.cat_max_ratio

    def get_transform(self, sem_seg: np.ndarray) -> Transform:
        h, w = sem_seg.shape
        y0, x0, ch, cw = self._window(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(CROP_ATTEMPTS):
                if self._balanced(sem_seg[y0:y0 + ch, x0:x0 + cw]):
                    break
                y0, x0, ch, cw = self._window(h, w)
        return T.CropTransform(x0, y0, cw, ch)
