"""MMSegmentation's PhotoMetricDistortion as a Detectron2 augmentation (images only).

Random brightness, then contrast either before or after the HSV changes, saturation and
hue, each applied with probability 1/2 and clipped to uint8 after every step, as the
official Rein training pipeline does.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation
from fvcore.transforms.transform import Transform

from ..errors import ConfigError


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass
class PhotometricParams:
    """One sampled distortion; None means the step is skipped."""

    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None


class PhotometricTransform(Transform):
    """Applies sampled photometric changes to an RGB or BGR uint8 image."""

    def __init__(self, params: PhotometricParams, rgb: bool) -> None:
        super().__init__()
        self.params = params
        self.rgb = rgb

    def _contrast(self, image: np.ndarray) -> np.ndarray:
        if self.params.contrast is None:
            return image
        return _to_uint8(image.astype(np.float32) * self.params.contrast)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        p = self.params
        image = img.astype(np.uint8)
        if p.brightness is not None:
            image = _to_uint8(image.astype(np.float32) + p.brightness)
        if p.contrast_first:
            image = self._contrast(image)
        if p.saturation is not None or p.hue is not None:
            to_hsv, from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.rgb
                                else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))
            hsv = cv2.cvtColor(image, to_hsv)
            if p.saturation is not None:
                hsv[..., 1] = _to_uint8(hsv[..., 1].astype(np.float32) * p.saturation)
            if p.hue is not None:
                hsv[..., 0] = (hsv[..., 0].astype(np.int32) + p.hue) % 180
            image = cv2.cvtColor(hsv, from_hsv)
        if not p.contrast_first:
            image = self._contrast(image)
        return image

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class PhotometricDistortion(Augmentation):
    """Samples the official distortion: brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18."""

    def __init__(self, image_format: str = "RGB", brightness_delta: int = 32,
                 contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ConfigError(f"INPUT.FORMAT={image_format!r}: photometric distortion needs RGB or BGR images")
        self.rgb = image_format == "RGB"
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def _maybe(self, sample):
        return sample() if np.random.randint(2) else None

    def get_transform(self, image: np.ndarray) -> PhotometricTransform:
        params = PhotometricParams(
            brightness=self._maybe(lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta)),
            contrast_first=bool(np.random.randint(2)),
            contrast=self._maybe(lambda: np.random.uniform(*self.contrast_range)),
            saturation=self._maybe(lambda: np.random.uniform(*self.saturation_range)),
            hue=self._maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta))),
        )
        return PhotometricTransform(params, self.rgb)
