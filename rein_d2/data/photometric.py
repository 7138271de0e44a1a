"""MMSegmentation's PhotoMetricDistortion as a Detectron2 augmentation (images only).

Random brightness, then contrast either right after it or last, with saturation and hue in
between, each applied with probability 1/2, as the official Rein training pipeline does.
Every step works on uint8 as MMSeg's does: values computed in float32, clipped to [0, 255]
and truncated; saturation and hue each convert to HSV and back on their own, so the image
is rounded to uint8 between them. The random numbers come from numpy's global generator in
MMSeg's order (brightness, contrast mode, [contrast], saturation, hue, [contrast]), so one
seed gives the official distortion.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation
from fvcore.transforms.transform import Transform

from ..errors import ConfigError


def _affine_uint8(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """alpha * values + beta in float32, clipped and truncated back to uint8."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


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
        self.to_hsv, self.from_hsv = ((cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if rgb
                                      else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR))

    def _in_hsv(self, image: np.ndarray, edit: Callable[[np.ndarray], None]) -> np.ndarray:
        hsv = cv2.cvtColor(image, self.to_hsv)
        edit(hsv)
        return cv2.cvtColor(hsv, self.from_hsv)

    def _saturate(self, hsv: np.ndarray) -> None:
        hsv[..., 1] = _affine_uint8(hsv[..., 1], alpha=self.params.saturation)

    def _shift_hue(self, hsv: np.ndarray) -> None:
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + self.params.hue) % 180  # OpenCV's uint8 hue is 0..179

    def _contrast(self, image: np.ndarray) -> np.ndarray:
        return image if self.params.contrast is None else _affine_uint8(image, alpha=self.params.contrast)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        p = self.params
        image = np.ascontiguousarray(img, dtype=np.uint8)
        if p.brightness is not None:
            image = _affine_uint8(image, beta=p.brightness)
        if p.contrast_first:
            image = self._contrast(image)
        if p.saturation is not None:
            image = self._in_hsv(image, self._saturate)
        if p.hue is not None:
            image = self._in_hsv(image, self._shift_hue)
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

    @staticmethod
    def _maybe(sample: Callable[[], float]) -> float | None:
        """A coin flip, then (on heads) the value: MMSeg draws them in this order."""
        return sample() if np.random.randint(2) else None

    def _contrast(self) -> float | None:
        return self._maybe(lambda: np.random.uniform(*self.contrast_range))

    def get_transform(self, image: np.ndarray) -> PhotometricTransform:
        brightness = self._maybe(lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_first = bool(np.random.randint(2))
        contrast = self._contrast() if contrast_first else None
        saturation = self._maybe(lambda: np.random.uniform(*self.saturation_range))
        hue = self._maybe(lambda: int(np.random.randint(-self.hue_delta, self.hue_delta)))  # [-18, 17] as MMSeg
        if not contrast_first:
            contrast = self._contrast()
        return PhotometricTransform(PhotometricParams(brightness, contrast, contrast_first, saturation, hue), self.rgb)
