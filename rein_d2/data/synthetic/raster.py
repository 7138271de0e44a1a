"""Perspective rasteriser of the synthetic street: world polygons -> image, labels, depth, lights.

Each part is drawn with one OpenCV polygon fill per output map, in painter's order, so
the label map and the image agree exactly (no anti-aliasing on labels).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SUBPIXEL_BITS = 4  # OpenCV fills polygons with 1/16-pixel vertex precision
FAR_DEPTH = 1.0e4  # depth of the sky, in metres
_MAX_COORD = 1.0e5  # clamp before the fixed-point conversion (vertices near the near plane)

BGR = tuple[float, float, float]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at (x, height, z) looking along +z; image rows grow downwards."""

    focal: float
    cx: float
    horizon: float  # image row of the horizon
    x: float = 0.0
    height: float = 1.5
    z: float = 0.0
    near: float = 1.0  # metres in front of the camera below which geometry is clipped

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world points in front of the camera -> (..., 2) pixel coordinates (u, v)."""
        depth = points[..., 2] - self.z
        u = self.cx + self.focal * (points[..., 0] - self.x) / depth
        v = self.horizon + self.focal * (self.height - points[..., 1]) / depth
        return np.stack([u, v], axis=-1)


@dataclass(frozen=True)
class Part:
    """Planar world polygons of one class and colour, drawn together.

    `polys` is (n, k, 3): n polygons of k vertices. `light` is the colour it emits at
    night (None: it emits nothing and hides the lights behind it). Ground parts keep the
    analytic ground-plane depth instead of writing their own.
    """

    label: int
    color: BGR
    polys: np.ndarray
    light: BGR | None = None
    ground: bool = False


@dataclass(frozen=True)
class Rendered:
    """One rendered view: BGR image in [0, 1], train ids, depth in metres, emitted light."""

    image: np.ndarray  # (H, W, 3) float32
    labels: np.ndarray  # (H, W) uint8
    depth: np.ndarray  # (H, W) float32
    light: np.ndarray  # (H, W, 3) float32


def clip_near(poly: np.ndarray, near_z: float) -> np.ndarray:
    """The part of a convex or concave planar polygon with z >= near_z (Sutherland-Hodgman)."""
    inside = poly[:, 2] >= near_z
    kept = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        if inside[i]:
            kept.append(a)
        if inside[i] != inside[(i + 1) % len(poly)]:
            kept.append(a + (near_z - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(kept).reshape(-1, 3)


class Canvas:
    """The four output maps of one view, filled part by part (far parts first)."""

    def __init__(self, camera: Camera, height: int, width: int):
        self.camera = camera
        self.image = np.zeros((height, width, 3), np.float32)
        self.labels = np.zeros((height, width), np.uint8)
        self.light = np.zeros((height, width, 3), np.float32)
        rows = np.arange(height, dtype=np.float32) + 0.5 - camera.horizon
        ground = camera.focal * camera.height / np.maximum(rows, 1e-3)
        column = np.where(rows > 0, ground, FAR_DEPTH).astype(np.float32)
        self.depth = np.repeat(column[:, None], width, axis=1)

    def draw(self, part: Part) -> None:
        """Fill every polygon of `part` into the four maps."""
        near_z = self.camera.z + self.camera.near
        in_front = (part.polys[..., 2] >= near_z).all(axis=1)
        polys = list(part.polys[in_front])
        polys += [p for p in (clip_near(q, near_z) for q in part.polys[~in_front]) if len(p) >= 3]
        if not polys:
            return
        scale = 1 << SUBPIXEL_BITS
        pixels = [np.round(np.clip(self.camera.project(p), -_MAX_COORD, _MAX_COORD) * scale)
                  .astype(np.int32) for p in polys]
        fill = dict(lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        cv2.fillPoly(self.labels, pixels, (int(part.label),), **fill)
        cv2.fillPoly(self.image, pixels, tuple(float(c) for c in part.color), **fill)
        cv2.fillPoly(self.light, pixels, part.light or (0.0, 0.0, 0.0), **fill)
        if not part.ground:
            depth = float(np.mean([p[:, 2].mean() for p in polys])) - self.camera.z
            cv2.fillPoly(self.depth, pixels, (depth,), **fill)

    def result(self) -> Rendered:
        return Rendered(self.image, self.labels, self.depth, self.light)
