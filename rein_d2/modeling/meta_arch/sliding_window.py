"""Sliding-window inference, as MMSegmentation's `slide_inference` (the official Rein evaluation).

Windows of `crop_size` every `stride` pixels; the last row and column are shifted back
inside the image, and overlapping predictions are averaged. Windows of all images are
run `batch_size` at a time. An image smaller than the crop is zero-padded (in normalised
space, like Detectron2's padding) to the crop size, so the model always sees crops of the
size it was trained on.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from detectron2.config import CfgNode
from torch import Tensor
from torch.nn import functional as F

from ...errors import ConfigError

Box = tuple[int, int, int, int]  # y1, y2, x1, x2


@dataclass(frozen=True)
class SlideWindow:
    """crop_size and stride as (height, width); batch_size windows per forward pass."""

    crop_size: tuple[int, int]
    stride: tuple[int, int]
    batch_size: int = 4

    @classmethod
    def from_config(cls, slide: CfgNode) -> SlideWindow:
        """The window of a config's TEST.SLIDE (whether or not TEST.SLIDE.ENABLED)."""
        return cls(tuple(slide.CROP_SIZE), tuple(slide.STRIDE), slide.BATCH_SIZE)

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or len(self.stride) != 2 or min(*self.crop_size, *self.stride) <= 0:
            raise ConfigError(f"TEST.SLIDE.CROP_SIZE={list(self.crop_size)} and TEST.SLIDE.STRIDE={list(self.stride)} "
                             "must be two positive integers each (height, width)")
        if self.stride[0] > self.crop_size[0] or self.stride[1] > self.crop_size[1]:
            raise ConfigError(f"TEST.SLIDE.STRIDE={list(self.stride)} exceeds TEST.SLIDE.CROP_SIZE="
                             f"{list(self.crop_size)}: windows would leave pixels unpredicted")
        if self.batch_size <= 0:
            raise ConfigError(f"SlideWindow: batch_size={self.batch_size} must be positive")

    def boxes(self, height: int, width: int) -> list[Box]:
        """Windows covering a height x width image; none extends beyond it."""
        (crop_h, crop_w), (stride_h, stride_w) = self.crop_size, self.stride
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        boxes = []
        for r in range(rows):
            y2 = min(r * stride_h + crop_h, height)
            for c in range(cols):
                x2 = min(c * stride_w + crop_w, width)
                boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
        return boxes


def slide_inference(images: list[Tensor], predict: Callable[[list[Tensor]], list[Tensor]], window: SlideWindow,
                    num_classes: int) -> list[Tensor]:
    """Per image [num_classes, H, W]: the average of `predict` over the windows covering each pixel.

    images: normalised [C, H, W]; predict: crops [C, crop_h, crop_w] -> [num_classes, crop_h, crop_w].
    """
    crop_h, crop_w = window.crop_size
    crops, placements = [], []
    for index, image in enumerate(images):
        for y1, y2, x1, x2 in window.boxes(*image.shape[-2:]):
            crops.append(F.pad(image[:, y1:y2, x1:x2], (0, crop_w - (x2 - x1), 0, crop_h - (y2 - y1))))
            placements.append((index, y1, y2, x1, x2))
    sums = [image.new_zeros(num_classes, *image.shape[-2:]) for image in images]
    counts = [image.new_zeros(1, *image.shape[-2:]) for image in images]
    for start in range(0, len(crops), window.batch_size):
        stop = start + window.batch_size
        for probs, (index, y1, y2, x1, x2) in zip(predict(crops[start:stop]), placements[start:stop]):
            sums[index][:, y1:y2, x1:x2] += probs[:, : y2 - y1, : x2 - x1]
            counts[index][:, y1:y2, x1:x2] += 1
    return [s / c for s, c in zip(sums, counts)]
