"""The 19 Cityscapes train classes that every DGSS benchmark is scored on.

The DGSS benchmark's own modules use them (catalog.py, where they become DGSS_CLASSES,
the label maps, the synthetic generator; the prepare scripts through DGSS_CLASSES).
Everything else reads a dataset's classes from its MetadataCatalog entry (dataset_classes.py).
"""
from __future__ import annotations

NUM_CLASSES = 19
IGNORE_LABEL = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

# The official Cityscapes colour of each train class (RGB), in train-id order.
CITYSCAPES_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
