"""The unlabelled world of the quickstart's foundation model: random streets in random appearances.

Streets come from their own scene set ("pretrain"), disjoint from the benchmark's train, val
and video streets. Rendering a street costs about 70 ms, restyling it a few, so a pool of
streets is rendered once and every training view restyles one of them afresh: a random
street, a random scale in [1, 1.5] of its height and a random square crop of it, a random
horizontal flip, then `appearance.randomise_appearance`. Everything is drawn from
(seed, step, position in the batch), so a view does not depend on which process makes it.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from .appearance import randomise_appearance
from .generate import HEIGHT, SCENE_SETS, WIDTH
from .scenes import render_scene

MAX_SCALE = 1.5


@dataclass(frozen=True)
class StreetPool:
    """Rendered streets before any appearance: base colours (BGR uint8) and material maps."""

    images: np.ndarray  # (n, H, W, 3) uint8
    materials: np.ndarray  # (n, H, W) uint8, the renderer's label values


def _street(args: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, index, height, width = args
    rendered = render_scene(np.random.default_rng([seed, SCENE_SETS["pretrain"], index]), height, width)
    return np.round(np.clip(rendered.image, 0, 1) * 255).astype(np.uint8), rendered.labels


def render_street_pool(count: int, seed: int, workers: int = 1, height: int = HEIGHT,
                       width: int = WIDTH) -> StreetPool:
    """`count` pretraining streets, rendered by `workers` processes (the result does not depend on them)."""
    jobs = [(seed, index, height, width) for index in range(count)]
    progress = dict(total=count, desc="rendering pretraining streets", unit="street")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            streets = list(tqdm(pool.map(_street, jobs, chunksize=16), **progress))
    else:
        streets = list(tqdm(map(_street, jobs), **progress))
    return StreetPool(np.stack([s[0] for s in streets]), np.stack([s[1] for s in streets]))


def pretraining_view(pool: StreetPool, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random square BGR uint8 view (`size` pixels) of a random pool street in a random appearance."""
    index = int(rng.integers(len(pool.images)))
    height, width = pool.materials.shape[1:]
    scale = rng.uniform(size / height, MAX_SCALE * size / height)
    shape = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = cv2.resize(pool.images[index], shape, interpolation=cv2.INTER_LINEAR)
    materials = cv2.resize(pool.materials[index], shape, interpolation=cv2.INTER_NEAREST)
    top, left = int(rng.integers(shape[1] - size + 1)), int(rng.integers(shape[0] - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    image, materials = image[window], materials[window]
    if rng.random() < 0.5:
        image, materials = image[:, ::-1], materials[:, ::-1]
    return randomise_appearance(image.astype(np.float32) / 255, np.ascontiguousarray(materials), rng)


def pretraining_batch(pool: StreetPool, size: int, batch: int, seed: int, step: int) -> np.ndarray:
    """(batch, size, size, 3) BGR uint8 views of training step `step`."""
    return np.stack([pretraining_view(pool, size, np.random.default_rng([seed, step, i])) for i in range(batch)])
