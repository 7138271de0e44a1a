"""Global and local texture randomisation (GTR-LTR, Peng et al., TIP 2021), without a style network.

The paper restyles GTAV images with textures of the Painter by Numbers paintings through a
neural style-transfer network (GTR: the whole image; LTR: random local regions) and adds
consistency losses between the views. rein-d2 has no style network and no extra loss; it
keeps the data side of the method, on any folder of texture images the user points
INPUT.GTR_LTR.TEXTURE_DIR to:

- global: the whole image is blended with a random texture, resized to cover the image and
  randomly cropped: image' = (1 - w) * image + w * texture, w drawn from INPUT.GTR_LTR.BLEND;
- local: the same blend only inside blob-shaped random regions (a coarse uniform noise grid,
  bicubically upsampled and thresholded) covering a fraction drawn from INPUT.GTR_LTR.LOCAL_AREA.

Each training sample is randomised globally with probability GLOBAL_PROB, else locally with
probability LOCAL_PROB, else kept. A blend keeps the image's edges under the texture but is
not a style transfer: the texture is overlaid, not re-rendered along the scene's structure.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

from ..errors import ConfigError
from .test_mapper import read_image_checked

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NOISE_GRID = 8  # cells of the coarse noise behind the local regions, along each side


def texture_files(folder: str) -> list[Path]:
    """The image files under `folder` (recursively, sorted), or a ConfigError saying what to set."""
    hint = ("set INPUT.GTR_LTR.TEXTURE_DIR to a folder of texture images (the paper uses the Painter by "
            "Numbers paintings, kaggle.com/c/painter-by-numbers)")
    if not folder:
        raise ConfigError(f"INPUT.GTR_LTR.ENABLED is True but INPUT.GTR_LTR.TEXTURE_DIR is empty: {hint}")
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"INPUT.GTR_LTR.TEXTURE_DIR {folder} (absolute: {path.resolve()}) is not a folder: {hint}")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"INPUT.GTR_LTR.TEXTURE_DIR {folder} holds no images ({' '.join(IMAGE_SUFFIXES)}): {hint}")
    return files


def cover_crop(texture: np.ndarray, height: int, width: int) -> np.ndarray:
    """`texture` resized (aspect kept) to cover height x width, then a random window of that size."""
    th, tw = texture.shape[:2]
    scale = max(height / th, width / tw)
    new_h, new_w = max(height, round(th * scale)), max(width, round(tw * scale))
    resized = cv2.resize(texture, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    y0, x0 = np.random.randint(new_h - height + 1), np.random.randint(new_w - width + 1)
    return resized[y0:y0 + height, x0:x0 + width]


def random_regions(height: int, width: int, area: float) -> np.ndarray:
    """[H, W] bool blobs covering about `area` of the image: smooth noise above its (1 - area) quantile."""
    noise = cv2.resize(np.random.rand(NOISE_GRID, NOISE_GRID).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    return noise > np.quantile(noise, 1.0 - area)


class TextureBlendTransform(Transform):
    """image * (1 - weights) + texture * weights on uint8 images of the texture's size; labels untouched."""

    def __init__(self, texture: np.ndarray, weights: np.ndarray) -> None:
        super().__init__()
        self.texture = texture
        self.weights = weights[..., None]

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        blended = img * (1.0 - self.weights) + self.texture * self.weights
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class TextureRandomization(T.Augmentation):
    """INPUT.GTR_LTR: global or local blending with a random texture of the folder (see the module doc)."""

    def __init__(self, texture_dir: str, image_format: str = "RGB", global_prob: float = 1 / 3,
                 local_prob: float = 1 / 3, blend: Sequence[float] = (0.3, 0.7),
                 local_area: Sequence[float] = (0.2, 0.5)) -> None:
        super().__init__()
        if min(global_prob, local_prob) < 0 or global_prob + local_prob > 1:
            raise ConfigError(f"INPUT.GTR_LTR: GLOBAL_PROB ({global_prob}) and LOCAL_PROB ({local_prob}) must be "
                              ">= 0 and sum to at most 1 (the rest of the samples keep their texture)")
        for name, (low, high) in (("BLEND", blend), ("LOCAL_AREA", local_area)):
            if not 0.0 < low <= high <= 1.0:
                raise ConfigError(f"INPUT.GTR_LTR.{name}={[low, high]} must be [low, high] with 0 < low <= high <= 1")
        self.files = texture_files(texture_dir)
        self.image_format = image_format
        self.global_prob, self.local_prob = global_prob, local_prob
        self.blend, self.local_area = tuple(blend), tuple(local_area)

    def _texture(self, height: int, width: int) -> np.ndarray:
        path = self.files[np.random.randint(len(self.files))]
        return cover_crop(read_image_checked(str(path), self.image_format), height, width)

    def get_transform(self, image: np.ndarray) -> Transform:
        draw = np.random.rand()
        if draw >= self.global_prob + self.local_prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        weights = np.full((h, w), np.random.uniform(*self.blend), dtype=np.float32)
        if draw >= self.global_prob:
            weights *= random_regions(h, w, np.random.uniform(*self.local_area))
        return TextureBlendTransform(self._texture(h, w), weights)
