"""Generic appearance randomisation: the broad world the tiny foundation model is pretrained on.

A real VFM has seen streets in every light, colour and camera, never the benchmark's
labels. This module draws, independently for every image, an appearance far wider than
the benchmark's source style, from generic randomisations:

- palette: each material (the surface kind the renderer drew, e.g. facade, asphalt, leaves)
  goes through its own linear colour map: its hue rotated by 0-360 degrees (p=0.8), its
  saturation scaled x0.4-2.2 and its brightness x0.6-1.5 (log-uniform), plus a colour cast
  (a random colour, minus its grey, times 0-1, times the luminance) that tints grey surfaces;
- texture: each material gets, with p=0.7, a multiplicative band-limited noise (Gaussian
  white noise smoothed at 1, 3 or 9 px for a 256-px-wide image) of amplitude 0-30%;
- lighting: exposure x0.3-1.8 (log-uniform) and a linear illumination ramp in a random
  direction of strength 0-70%;
- camera: white balance x0.7-1.4 per channel, saturation x0.4-1.8 (grey with p=0.1), contrast
  x0.4-1.4 towards the mean grey, gamma 0.6-1.5 (log-uniform), Gaussian blur sigma
  0.3-1.2 px (p=0.3), Gaussian noise sigma 0.002-0.05 (log-uniform).

Nothing of the benchmark's target styles (domains.py) is used or imitated: no emitted
lights (windows, lamps, headlights), no haze growing with depth, no rain streaks, snow or
flakes, no per-class stripe or checker patterns, no defocus disc, no JPEG. Where a generic
randomisation touches a target's axis, its range stays short of it: the noise sigma peaks at
0.05 (target "noise": 0.12), the blur at sigma 1.2 px (target "blur": a disc of radius 2.5-3.5 px).
The renderer's material index is read only to keep each surface's recolouring coherent; it
is never a training target.
"""
from __future__ import annotations

import cv2
import numpy as np

REFERENCE_WIDTH = 256  # the pixel sizes above are for this width
MATERIALS = 256  # lookup-table size over the renderer's label values
NOISE_SCALES = (1.0, 3.0, 9.0)


def _log_uniform(rng: np.random.Generator, low: float, high: float, size=None) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size)).astype(np.float32)


def _luminance(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[..., None]


def _hue_rotations(angles: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotations of colour space about its grey axis (a hue rotation) by `angles` radians."""
    axis = np.full(3, 1 / np.sqrt(3))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    return cos * np.eye(3) + sin * cross + (1 - cos) * np.outer(axis, axis)


def _palette(image: np.ndarray, materials: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each material's colours through its own linear map: hue rotation, saturation, brightness, tint."""
    hue = np.radians(rng.uniform(0, 360, MATERIALS)) * (rng.random(MATERIALS) < 0.8)
    saturation = _log_uniform(rng, 0.4, 2.2, MATERIALS)[:, None, None]
    brightness = _log_uniform(rng, 0.6, 1.5, MATERIALS)[:, None, None]
    grey = np.full((3, 3), 1 / 3)  # projects a colour onto the grey axis (its mean, per channel)
    cast = rng.random((MATERIALS, 3))
    cast = rng.uniform(0, 1, (MATERIALS, 1)) * (cast - cast.mean(axis=1, keepdims=True))
    maps = brightness * (grey + saturation * _hue_rotations(hue) @ (np.eye(3) - grey)) + cast[:, :, None] * grey[0]
    return np.einsum("hwij,hwj->hwi", maps.astype(np.float32)[materials], image)


def _band_limited_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed at about `sigma` pixels."""
    step = max(1.0, sigma)
    coarse = rng.standard_normal((int(np.ceil(height / step)) + 1, int(np.ceil(width / step)) + 1), np.float32)
    field = cv2.resize(cv2.GaussianBlur(coarse, (0, 0), 1.0), (width, height), interpolation=cv2.INTER_LINEAR)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _texture(image: np.ndarray, materials: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = materials.shape
    scale = width / REFERENCE_WIDTH
    fields = np.stack([_band_limited_noise(rng, height, width, sigma * scale) for sigma in NOISE_SCALES])
    which = rng.integers(len(fields), size=MATERIALS)
    amplitude = (rng.uniform(0, 0.3, MATERIALS) * (rng.random(MATERIALS) < 0.7)).astype(np.float32)
    noise = np.take_along_axis(fields, which[materials][None], axis=0)[0]
    return image * (1 + amplitude[materials] * noise)[..., None]


def _lighting(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.7)
    rows, cols = np.mgrid[-1:1:height * 1j, -1:1:width * 1j].astype(np.float32)
    ramp = 1 + strength * (np.cos(angle) * cols + np.sin(angle) * rows)
    return (image * (_log_uniform(rng, 0.3, 1.8) * np.maximum(ramp, 0.2))[..., None]).astype(np.float32)


def _camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = image * _log_uniform(rng, 0.7, 1.4, 3)
    grey = _luminance(np.clip(image, 0, None))
    saturation = 0.0 if rng.random() < 0.1 else rng.uniform(0.4, 1.8)
    image = grey + np.float32(saturation) * (image - grey)
    contrast = np.float32(rng.uniform(0.4, 1.4))
    image = contrast * image + (1 - contrast) * grey.mean()
    image = cv2.pow(np.clip(image, 0, 1), float(_log_uniform(rng, 0.6, 1.5)))
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2) * image.shape[1] / REFERENCE_WIDTH)
    return image + _log_uniform(rng, 0.002, 0.05) * rng.standard_normal(image.shape, np.float32)


def randomise_appearance(image: np.ndarray, materials: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 view of a rendered street (float BGR in [0, 1], its material map) in a random appearance."""
    image = _palette(image.astype(np.float32), materials, rng)
    image = _texture(image, materials, rng)
    image = _camera(_lighting(image, rng), rng)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
