"""The synthetic benchmark's own classes: what a tiny model can learn at 128x256 pixels.

The renderer draws the objects of the 19 Cityscapes train classes, but at the benchmark's
resolution (focal length 230 px) a bicycle, a fence or a traffic light covers a few pixels.
The labels written to disk gather the 19 classes into the Cityscapes categories (Cityscapes'
own `category` of each label), with "flat" kept as road and sidewalk, which are both large and
which a model must tell apart. Two categories are drawn but not scored (IGNORED: their pixels
carry the ignore label, as Cityscapes' void classes): "object" (poles, signs, traffic lights,
one to five pixels wide) and "human" (pedestrians and riders, about six pixels wide). After
300 iterations of the quickstart's recipe on the MAE-pretrained foundation ViT, every mode
(Freeze, Rein, Full, and Full from random weights) scored 0% IoU on "object" and 0-7% on
"human", against 42-91% for each of the six classes kept. Each class is drawn in the official
colour of one of its members (COLOR_OF).
"""
from __future__ import annotations

import numpy as np

from ..classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS

SYNTHETIC_IGNORE_LABEL = 255
# Benchmark class -> the renderer's Cityscapes train classes it gathers.
MEMBERS: dict[str, tuple[str, ...]] = {
    "road": ("road",),
    "sidewalk": ("sidewalk",),
    "construction": ("building", "wall", "fence"),
    "nature": ("vegetation", "terrain"),
    "sky": ("sky",),
    "vehicle": ("car", "truck", "bus", "train", "motorcycle", "bicycle"),
}
IGNORED: tuple[str, ...] = ("pole", "traffic sign", "traffic light", "person", "rider")
SYNTHETIC_CLASSES: tuple[str, ...] = tuple(MEMBERS)
# The member whose colour a class is drawn in.
COLOR_OF = ("road", "sidewalk", "building", "vegetation", "sky", "car")
SYNTHETIC_COLORS: tuple[tuple[int, int, int], ...] = tuple(
    CITYSCAPES_COLORS[CITYSCAPES_CLASSES.index(name)] for name in COLOR_OF)


def _lookup() -> np.ndarray:
    table = np.full(256, SYNTHETIC_IGNORE_LABEL, np.uint8)
    for class_id, members in enumerate(MEMBERS.values()):
        table[[CITYSCAPES_CLASSES.index(name) for name in members]] = class_id
    return table


RENDERED_TO_BENCHMARK = _lookup()


def benchmark_labels(rendered_labels: np.ndarray) -> np.ndarray:
    """The renderer's Cityscapes train ids -> the benchmark's class ids (uint8; IGNORED -> 255)."""
    return RENDERED_TO_BENCHMARK[rendered_labels]
