"""Domain styles: the same rendered street under different appearance (weather, light, camera).

Each style changes only pixels, never labels, so a model's drop in mIoU from the source
style to a target style measures its sensitivity to that domain shift alone. Styles
work on float BGR images in [0, 1] with whole-image array operations; kernel sizes
scale with the image width so every size looks alike.
"""
from __future__ import annotations

import zlib
from typing import Callable

import cv2
import numpy as np

from .objects import ID
from .raster import Rendered

Style = Callable[[Rendered, np.random.Generator], np.ndarray]
REFERENCE_WIDTH = 256  # kernel sizes below are tuned for this width
GROUND = np.isin(np.arange(256), [ID["road"], ID["sidewalk"], ID["terrain"]])


def _scale(rendered: Rendered) -> float:
    return rendered.image.shape[1] / REFERENCE_WIDTH


def _noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    return image + rng.normal(0.0, sigma, image.shape).astype(np.float32)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[..., None]


def source(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Clear daylight with mild sensor noise: the training style."""
    return _noise(rng, rendered.image, 0.012)


def night(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Dark, blue-tinted scene lit by windows, lamps, vehicle and signal lights with glow,
    and by the camera car's own headlights on the ground ahead."""
    height, width = rendered.labels.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    beam = np.exp(-((cols - width / 2) / (0.3 * width)) ** 2
                  - ((rows - height) / (0.35 * height)) ** 2)
    lit_ground = 1.0 + 5.0 * beam * GROUND[rendered.labels]
    dark = rendered.image * np.float32(rng.uniform(0.08, 0.15)) * np.float32([1.25, 0.95, 0.8])
    dark = dark * lit_ground[..., None]
    dark[rendered.labels == ID["sky"]] = np.float32([0.1, 0.04, 0.02])
    glow = cv2.GaussianBlur(rendered.light, (0, 0), 3.0 * _scale(rendered))
    return _noise(rng, dark + 0.9 * rendered.light + 1.5 * glow, 0.025)


def fog(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Haze thickening with distance (Koschmieder's law); the sky vanishes in it."""
    transmission = np.exp(-rng.uniform(0.035, 0.07) * rendered.depth)[..., None]
    airlight = np.float32(rng.uniform(0.72, 0.85)) * np.float32([1.0, 0.99, 0.96])
    return _noise(rng, rendered.image * transmission + airlight * (1 - transmission), 0.012)


def _streaks(rng: np.random.Generator, shape: tuple[int, int], density: float, length: int,
             angle: float) -> np.ndarray:
    """Sparse drops smeared along a slanted line: falling rain as the camera sees it."""
    drops = (rng.random(shape) < density).astype(np.float32)
    kernel = np.zeros((length, length), np.float32)
    dx = np.tan(np.radians(angle)) * length / 2
    cv2.line(kernel, (round(length / 2 - dx), 0), (round(length / 2 + dx), length - 1), 1.0)
    return np.clip(cv2.filter2D(drops, -1, kernel), 0.0, 1.0)


def rain(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Overcast, wet and desaturated, with rain streaks and a slightly blurred lens."""
    scale = _scale(rendered)
    dull = 0.5 * rendered.image + 0.5 * _grey(rendered.image)
    dull = dull * np.float32(rng.uniform(0.55, 0.7))
    dull[rendered.labels == ID["sky"]] = np.float32(rng.uniform(0.45, 0.6))
    streaks = _streaks(rng, rendered.labels.shape, 0.004, max(5, round(14 * scale)),
                       rng.uniform(-20, 20))
    wet = cv2.GaussianBlur(dull, (0, 0), 0.7 * scale) + 0.3 * streaks[..., None]
    return _noise(rng, wet, 0.015)


def _flakes(rng: np.random.Generator, shape: tuple[int, int], density: float,
            sigma: float) -> np.ndarray:
    flakes = cv2.GaussianBlur((rng.random(shape) < density).astype(np.float32), (0, 0), sigma)
    return np.clip(flakes / flakes.max(initial=1e-6), 0.0, 1.0)


def snow(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Snow-covered ground and plants, flat grey light, falling flakes and light haze."""
    scale = _scale(rendered)
    cover = np.zeros(256, np.float32)
    cover[GROUND] = rng.uniform(0.6, 0.85)
    cover[ID["vegetation"]] = rng.uniform(0.3, 0.5)
    amount = cover[rendered.labels][..., None]
    white = np.float32([0.95, 0.93, 0.9])
    snowy = (0.75 * rendered.image + 0.15) * (1 - amount) + white * amount
    snowy[rendered.labels == ID["sky"]] = np.float32(rng.uniform(0.75, 0.85))
    transmission = np.exp(-0.02 * rendered.depth)[..., None]
    snowy = snowy * transmission + np.float32(0.85) * (1 - transmission)
    flakes = np.maximum(_flakes(rng, rendered.labels.shape, 0.006, 0.6 * scale),
                        _flakes(rng, rendered.labels.shape, 0.0015, 1.3 * scale))
    return _noise(rng, np.maximum(snowy, flakes[..., None]), 0.01)


def color(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """A different camera and grading: rotated hues, stronger saturation, a colour cast."""
    hsv = cv2.cvtColor(np.clip(rendered.image, 0, 1), cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(60, 150)) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1.3, 1.7), 0, 1)
    shifted = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * rng.uniform(0.75, 1.25, 3).astype(np.float32)
    return _noise(rng, np.clip(shifted, 0, 1) ** np.float32(rng.uniform(0.7, 1.4)), 0.012)


def _class_textures(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(classes, H, W) stripe and checker patterns in [0, 1], one per rendered class.

    Frequencies and orientations are fixed for the domain (same generator seed every
    image), so the texture of a class is a property of the domain; only phases vary.
    """
    style = np.random.default_rng(zlib.crc32(b"texture"))
    count = len(ID)
    freq = (style.uniform(0.05, 0.35, (count, 2)) * np.where(style.random((count, 2)) < 0.5, -1, 1)).astype(np.float32)
    checker = style.random(count) < 0.4
    grid = np.mgrid[0:height, 0:width].astype(np.float32)
    rows, cols = grid * np.float32(REFERENCE_WIDTH / width)
    phase = rng.uniform(0, 2 * np.pi, (count, 2)).astype(np.float32)
    a = np.sin(freq[:, 0, None, None] * cols + phase[:, 0, None, None])
    b = np.sin(freq[:, 1, None, None] * rows + phase[:, 1, None, None])
    waves = np.where(checker[:, None, None], np.sign(a * b), np.sin(
        freq[:, 0, None, None] * cols + freq[:, 1, None, None] * rows + phase[:, 0, None, None]))
    return 0.5 + 0.5 * waves


def texture(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Every class covered by a strong stripe or checker texture of its own."""
    height, width = rendered.labels.shape
    pattern = np.take_along_axis(_class_textures(height, width, rng),
                                 rendered.labels[None].astype(np.intp), axis=0)[0]
    return _noise(rng, rendered.image * (0.45 + 0.9 * pattern[..., None]), 0.012)


def noise(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Strong Gaussian sensor noise (as Cityscapes-C gaussian_noise, high severity)."""
    return _noise(rng, rendered.image, 0.12)


def blur(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Defocus blur with a disc kernel (as Cityscapes-C defocus_blur)."""
    radius = max(1, round(rng.uniform(2.5, 3.5) * _scale(rendered)))
    kernel = cv2.circle(np.zeros((2 * radius + 1,) * 2, np.float32), (radius, radius), radius,
                        1.0, -1)
    return cv2.filter2D(source(rendered, rng), -1, kernel / kernel.sum())


def jpeg(rendered: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Heavy JPEG compression artefacts (as Cityscapes-C jpeg_compression)."""
    quality = int(rng.integers(5, 11))
    ok, data = cv2.imencode(".jpg", to_uint8(source(rendered, rng)),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "OpenCV could not encode JPEG"
    return cv2.imdecode(data, cv2.IMREAD_COLOR).astype(np.float32) / 255.0


SOURCE_DOMAIN = "source"
STYLES: dict[str, Style] = {
    "source": source, "night": night, "fog": fog, "rain": rain, "snow": snow,
    "color": color, "texture": texture, "noise": noise, "blur": blur, "jpeg": jpeg,
}
TARGET_DOMAINS: tuple[str, ...] = tuple(name for name in STYLES if name != SOURCE_DOMAIN)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def domain_code(domain: str) -> int:
    """A stable number per domain name, to seed its random effects independently."""
    return zlib.crc32(domain.encode())


def stylise(rendered: Rendered, domain: str, rng: np.random.Generator) -> np.ndarray:
    """The BGR uint8 image of `rendered` in `domain`."""
    if domain not in STYLES:
        raise KeyError(f"unknown synthetic domain '{domain}'; choose one of {', '.join(STYLES)}")
    return to_uint8(STYLES[domain](rendered, rng))
